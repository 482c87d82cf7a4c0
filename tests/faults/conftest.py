"""A stack of its own for fault injection: the seed's 2 s delay, two workers, short leases."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.stack import ROOT, Stack
from tests.conftest import own_stack_config, stack_data_dir
from tests.faults.harness import Audit

FAULT_DELAY_SECONDS = 2.0
REPORT = ROOT / "docs" / "RELIABILITY.md"


@pytest.fixture(scope="package")
def fault_stack() -> Iterator[Stack]:
    """The whole service with the documented 2 s delay, two worker and two server processes."""
    with stack_data_dir("faults") as data_dir:
        config = own_stack_config(
            data_dir,
            env={
                "SIMULATED_DELAY_SECONDS": str(FAULT_DELAY_SECONDS),
                "WORKER_CONCURRENCY": "200",
                "JOB_LEASE_SECONDS": "4",
                # Several kills in a row may hit one job; it must still finish, not give up.
                "MAX_ATTEMPTS": "10",
                "MAINTENANCE_INTERVAL_SECONDS": "0.5",
                "REDISPATCH_AFTER_SECONDS": "5",
                "WATCH_HEARTBEAT_SECONDS": "2",
                "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
                "SHUTDOWN_GRACE_SECONDS": "5",
                # Faults hit a supervised pair of servers sharing the port.
                "SERVER_PROCESSES": "2",
            },
            workers=2,
        )
        with Stack(config) as stack:
            yield stack


@pytest.fixture(scope="package")
def reliability_report() -> Iterator[dict[str, tuple[str, float, Audit]]]:
    """Scenario name -> (description, fault seconds, audit); written to docs/RELIABILITY.md."""
    results: dict[str, tuple[str, float, Audit]] = {}
    yield results
    if results:
        _write_report(results)


def _commit() -> str:
    completed = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    return completed.stdout.strip() or "unknown"


def _write_report(results: dict[str, tuple[str, float, Audit]]) -> None:
    columns = [
        "acknowledged",
        "lost",
        "duplicated_outcomes",
        "wrong_results",
        "not_final",
        "rerun_jobs",
        "max_attempts",
        "watched",
        "watch_missed",
        "watch_repeated",
        "retries",
        "given_up",
    ]
    lines = [
        "## The fault-injection suite's last run",
        "",
        "Written by `tests/faults/` (part of `make test`) each time it runs. Each scenario breaks a",
        "real process while clients submit (retrying with the same idempotency key until",
        "acknowledged) and watch (resuming after the last sequence they saw), then audits every",
        "acknowledged job in PostgreSQL: it must exist, be final exactly once, and hold the exact",
        "result; every watcher must have seen each state change once.",
        "",
        f"Run: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {_commit()}, "
        f"{platform.machine()} with {os.cpu_count()} cores; "
        f"simulated delay {FAULT_DELAY_SECONDS:g} s, 2 worker and 2 server processes, lease 4 s.",
        "",
        "| scenario | what was broken | fault lasted (s) | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for name, (description, seconds, result) in results.items():
        values = asdict(result)
        lines.append(
            f"| {name} | {description} | {seconds:.1f} | "
            + " | ".join(str(values[c]) for c in columns)
            + " |"
        )
    lines += [
        "",
        "Columns: *acknowledged* jobs the clients got an OK for; *lost* acknowledged but missing;",
        "*duplicated_outcomes* jobs with more than one final event; *wrong_results* final but not",
        "SUCCESS with the exact value; *not_final* still open after the settle deadline;",
        "*rerun_jobs* jobs that needed more than one attempt (their worker was lost);",
        "*watch_missed* / *watch_repeated* state changes a watcher never saw / saw twice;",
        "*retries* client retries of retryable errors; *given_up* submissions never acknowledged.",
        "",
    ]
    _replace_section(REPORT, "\n".join(lines))


# The fault suite rewrites only its own section of the report; the rest is written by hand
# (or by make soak and make mutation, whose figures are pasted in).
_SECTION_START = "<!-- fault suite: the section below is written by tests/faults/conftest.py -->"
_SECTION_END = "<!-- end of the fault suite's section -->"


def _replace_section(report: Path, section: str) -> None:
    text = report.read_text() if report.exists() else "# Reliability\n\n"
    block = f"{_SECTION_START}\n{section}{_SECTION_END}"
    if _SECTION_START in text and _SECTION_END in text:
        before, rest = text.split(_SECTION_START, 1)
        text = before + block + rest.split(_SECTION_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    report.parent.mkdir(exist_ok=True)
    report.write_text(text)
