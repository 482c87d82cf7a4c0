"""`python -m benchmarks [--quick]`: measure the service and its references, write and print the results."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.infra import Infrastructure
from benchmarks.machine import ROOT, ForeignCpu, cpu_plan
from benchmarks.report import markdown_section, print_table, summarise, write_json, write_markdown
from benchmarks.runner import PHASE_FUNCTIONS, PHASES, Run, phase_stacks
from benchmarks.sizes import FULL, QUICK

RESULTS = Path(__file__).resolve().parent / "results"


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes (about 2 minutes); what CI runs"
    )
    parser.add_argument(
        "--only",
        default=",".join(PHASES),
        help=f"comma-separated phases to run (default: all of {', '.join(PHASES)})",
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="JSON file (default: results/latest.json, or results/quick.json with --quick)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the load generator to its own CPU"
    )
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the stacks' data and logs, and say where"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record py-spy profiles (raw collapsed stacks) of the server and workers into DIR",
    )
    return parser.parse_args()


def main() -> int:
    """Run the chosen phases; write results/*.json, print the table; a full run also updates BENCHMARKS.md."""
    arguments = _arguments()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sizes = QUICK if arguments.quick else FULL
    phases = [phase.strip() for phase in arguments.only.split(",") if phase.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        print(f"unknown phases: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    plan = cpu_plan(pin=not arguments.no_pin)
    data_dir = Path(tempfile.mkdtemp(prefix="jobs-bench-")) if arguments.keep_logs else None
    started = time.monotonic()
    foreign = ForeignCpu()
    foreign.start()
    try:
        with (
            tempfile.TemporaryDirectory(prefix="jobs-bench-") as scratch,
            Infrastructure(data_dir or Path(scratch), plan=plan) as infra,
        ):
            run = Run(sizes=sizes, plan=plan, infra=infra, profile_dir=arguments.profile)
            run.say(f"{sizes.mode} run: {', '.join(phases)}; {plan.describe()}")
            for phase in PHASES:
                if phase in phases:
                    foreign.phase = phase
                    PHASE_FUNCTIONS[phase](run)
    finally:
        foreign.stop()
    if data_dir is not None:
        print(f"data and logs kept in {data_dir}", file=sys.stderr)
    results = summarise(
        run.samples,
        mode=sizes.mode,
        plan=plan,
        duration_seconds=time.monotonic() - started,
        foreign_cpu=foreign.by_phase(),
    )
    output = arguments.output or RESULTS / ("quick.json" if arguments.quick else "latest.json")
    write_json(results, output)
    print_table(results)
    print(f"written: {output}")
    if sizes is FULL and phases == list(PHASES):
        stacks = phase_stacks()
        write_markdown(
            ROOT / "BENCHMARKS.md",
            markdown_section(
                results, {phase: stacks[phase] for phase in PHASES if phase in stacks}
            ),
        )
        print(f"written: {ROOT / 'BENCHMARKS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
