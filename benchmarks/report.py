"""Turns samples into figures, ratios and target checks; writes the JSON, the table and BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.machine import CpuPlan, cpu_model, git_commit
from benchmarks.pinned import Samples
from benchmarks.stats import Figure


@dataclass(frozen=True)
class Target:
    """A target of issue 15, judged on a figure's or ratio's median: at least (or at most)
    `bound`, or `bound` times the median of `of` (a figure measured in the same run)."""

    key: str
    text: str
    at_least: bool
    bound: float
    of: str | None = None

    def met(self, medians: dict[str, float]) -> bool | None:
        """Whether the median meets the target; None if a figure it needs was not measured."""
        if self.key not in medians or (self.of is not None and self.of not in medians):
            return None
        limit = self.bound * (medians[self.of] if self.of is not None else 1.0)
        value = medians[self.key]
        return value >= limit if self.at_least else value <= limit


# name: (numerator, denominator), both medians.
RATIOS: dict[str, tuple[str, str]] = {
    # Against R1's echo server measured in alternate windows with SubmitJob (runner.edge).
    "ratio_submit_grpc_vs_echo": ("submit_grpc_c128_per_s", "echo_grpc_in_turns_c128_per_s"),
    "ratio_submit_grpc_p99_vs_echo_p99": (
        "submit_grpc_c128_p99_ms",
        "echo_grpc_in_turns_c128_p99_ms",
    ),
    "ratio_submit_rest_vs_grpc": ("submit_rest_c128_per_s", "submit_grpc_c128_per_s"),
    # The same Envoy hop on both sides: what REST itself costs (transcoding, the submit script).
    "ratio_submit_rest_vs_grpc_envoy": ("submit_rest_c128_per_s", "submit_grpc_envoy_c128_per_s"),
    # Measured in alternate windows on two stacks (runner.edge_without_authentication).
    "ratio_submit_grpc_auth_vs_noauth": (
        "submit_grpc_auth_alternating_c128_per_s",
        "submit_grpc_noauth_c128_per_s",
    ),
    "ratio_batch_submit_vs_submit_grpc": ("batch_submit_jobs_per_s", "submit_grpc_c128_per_s"),
    "ratio_lifecycle_delay0_vs_celery_noop": (
        "lifecycle_delay0_per_s",
        "celery_noop_roundtrip_per_s",
    ),
    "ratio_lifecycle_delay0_batch_vs_celery_noop": (
        "lifecycle_delay0_batch_per_s",
        "celery_noop_roundtrip_per_s",
    ),
    "ratio_cpu_per_job_vs_celery_noop": ("cpu_ms_per_job", "celery_noop_cpu_ms_per_task"),
    "ratio_lifecycle_delay2_vs_seed_model": ("lifecycle_delay2_per_s", "seed_model_delay2_per_s"),
    "ratio_watch_event_p99_vs_listen_p99": ("watch_event_p99_ms", "listen_event_p99_ms"),
    "ratio_bigjob_growth_vs_payload": ("bigjob_1m_max_growth_mb", "bigjob_1m_payload_mb"),
    "ratio_getstatus_1m_vs_10k": ("getstatus_p50_ms_1m", "getstatus_p50_ms_10k"),
}

# Issue 15's table: the targets a full run is judged on.
TARGETS = [
    Target("ratio_submit_grpc_p99_vs_echo_p99", "<= 1.5 x R1's p99", at_least=False, bound=1.5),
    Target("ratio_watch_event_p99_vs_listen_p99", "<= 2 x R4's p99", at_least=False, bound=2.0),
    Target(
        "batch_submit_jobs_per_s",
        ">= 5 x SubmitJob gRPC",
        at_least=True,
        bound=5.0,
        of="submit_grpc_c128_per_s",
    ),
    Target(
        "lifecycle_delay0_batch_per_s",
        ">= 5 x R2",
        at_least=True,
        bound=5.0,
        of="celery_noop_roundtrip_per_s",
    ),
    Target("lifecycle_delay2_per_s", ">= 800 jobs/s", at_least=True, bound=800),
    Target("cli_2000_watch_seconds", "<= 6 s (3 x the delay)", at_least=False, bound=6.0),
    Target("watch_streams", ">= 50,000 streams", at_least=True, bound=50_000),
    Target("watch_kb_per_stream", "<= 30 KB", at_least=False, bound=30),
    Target("ratio_cpu_per_job_vs_celery_noop", "<= 0.3 x R2's", at_least=False, bound=0.3),
    Target("idle_cpu_cores", "<= 0.02 cores", at_least=False, bound=0.02),
    Target("ratio_submit_grpc_vs_echo", ">= 0.6 x R1", at_least=True, bound=0.6),
    Target("ratio_submit_rest_vs_grpc", ">= 0.9 x gRPC", at_least=True, bound=0.9),
    Target("ratio_submit_grpc_auth_vs_noauth", ">= 0.9 x without", at_least=True, bound=0.9),
]

# Issue 4's targets that issue 15 replaced: shown beside their figures, not judged.
FORMER_TARGETS: dict[str, str] = {
    "submit_grpc_c128_p99_ms": "(was < 100 ms)",
    "watch_event_p99_ms": "(was < 100 ms)",
    "ratio_lifecycle_delay0_vs_celery_noop": "(was >= 1.5)",
    "ratio_bigjob_growth_vs_payload": "(was <= 5)",
    "bigjob_1m_seconds": "(was < 2 s)",
}

# Table order and labels; figures not listed follow at the end under their key.
LABELS: dict[str, str] = {
    "echo_grpc_c128_per_s": "R1 bare grpc.aio echo, 128 in flight (/s)",
    "echo_grpc_c128_p99_ms": "R1 echo p99 (ms)",
    "celery_noop_roundtrip_per_s": "R2 bare Celery no-op round trip, prefork (/s)",
    "seed_model_delay2_per_s": "R3 seed model: 2 s task, prefork (/s)",
    "listen_event_p99_ms": "R4 bare LISTEN client, commit->notification p99 (ms)",
    "listen_event_p50_ms": "R4 p50 (ms)",
    "celery_noop_cpu_ms_per_task": "R2 CPU per no-op task, worker + broker (ms)",
    "celery_noop_cpu_ms_per_task_worker": "  Celery worker (ms)",
    "celery_noop_cpu_ms_per_task_redis": "  Redis (ms)",
    "echo_grpc_in_turns_c128_per_s": "R1 echo, in turns with SubmitJob (/s)",
    "echo_grpc_in_turns_c128_p99_ms": "  R1 echo in turns, p99 (ms)",
    "submit_grpc_c128_per_s": "SubmitJob gRPC, 128 in flight (/s)",
    "submit_grpc_c128_p99_ms": "SubmitJob gRPC p99 (ms)",
    "ratio_submit_grpc_p99_vs_echo_p99": "  ratio SubmitJob p99 / R1 p99",
    "ratio_submit_grpc_vs_echo": "  ratio SubmitJob gRPC / R1",
    "submit_grpc_auth_alternating_c128_per_s": "SubmitJob gRPC, authenticated, in turns (/s)",
    "submit_grpc_auth_alternating_c128_p99_ms": "  authenticated, in turns, p99 (ms)",
    "submit_grpc_noauth_c128_per_s": "SubmitJob gRPC without authentication, in turns (/s)",
    "submit_grpc_noauth_c128_p99_ms": "  without authentication p99 (ms)",
    "ratio_submit_grpc_auth_vs_noauth": "  ratio with / without authentication",
    "submit_rest_c128_per_s": "SubmitJob REST via Envoy, 128 in flight (/s)",
    "submit_rest_c128_p99_ms": "SubmitJob REST p99 (ms)",
    "ratio_submit_rest_vs_grpc": "  ratio REST / gRPC",
    "submit_grpc_envoy_c128_per_s": "SubmitJob gRPC via Envoy, 128 in flight (/s)",
    "submit_grpc_envoy_c128_p99_ms": "  gRPC via Envoy p99 (ms)",
    "ratio_submit_rest_vs_grpc_envoy": "  ratio REST / gRPC, both via Envoy",
    "batch_submit_jobs_per_s": "BatchSubmitJobs, 1,000 a call, 8 in flight (jobs/s)",
    "batch_submit_p99_ms": "  BatchSubmitJobs call p99 (ms)",
    "ratio_batch_submit_vs_submit_grpc": "  ratio batch / SubmitJob gRPC",
    "lifecycle_delay0_batch_per_s": "submit->SUCCESS, delay 0, BatchSubmitJobs (/s)",
    "ratio_lifecycle_delay0_batch_vs_celery_noop": "  ratio / R2",
    "cpu_ms_per_job": "  CPU of the whole stack per job (ms)",
    "cpu_ms_per_job_server": "    server (ms)",
    "cpu_ms_per_job_workers": "    workers (ms)",
    "cpu_ms_per_job_envoy": "    Envoy (ms)",
    "cpu_ms_per_job_postgres": "    PostgreSQL (ms)",
    "cpu_ms_per_job_redis": "    Redis (ms)",
    "ratio_cpu_per_job_vs_celery_noop": "  ratio CPU per job / R2's per task",
    "lifecycle_delay0_per_s": "submit->SUCCESS, delay 0, SubmitJob (/s)",
    "lifecycle_delay0_cpu_ms_per_job": "  CPU of the whole stack per job (ms)",
    "ratio_lifecycle_delay0_vs_celery_noop": "  ratio lifecycle delay 0 / R2",
    "lifecycle_delay2_per_s": "submit->SUCCESS, delay 2 s, sustained (/s)",
    "ratio_lifecycle_delay2_vs_seed_model": "  ratio lifecycle delay 2 s / R3",
    "watch_streams": "WatchJob streams open on one server",
    "watch_kb_per_stream": "server RSS per open stream (KB)",
    "watch_event_p99_ms": "event commit->watcher p99 (ms)",
    "ratio_watch_event_p99_vs_listen_p99": "  ratio watcher p99 / R4 p99",
    "watch_event_p50_ms": "event commit->watcher p50 (ms)",
    "watch_event_rate_per_s": "  events committed while measuring (/s)",
    "watch_event_open_streams": "  streams open while measuring",
    "bigjob_1m_seconds": "big job submit->SUCCESS (s)",
    "bigjob_1m_peak_rss_mb": "big job: peak RSS of server/workers (MB)",
    "bigjob_1m_max_growth_mb": "big job: largest RSS growth of one process (MB)",
    "bigjob_1m_payload_mb": "  big job payload (MB)",
    "ratio_bigjob_growth_vs_payload": "  ratio growth / payload",
    "getstatus_p50_ms_10k": "GetStatus p50, small table (ms)",
    "getstatus_p50_ms_1m": "GetStatus p50, large table (ms)",
    "ratio_getstatus_1m_vs_10k": "  ratio large / small",
    "getstatus_p99_ms_10k": "GetStatus p99, small table (ms)",
    "getstatus_p99_ms_1m": "GetStatus p99, large table (ms)",
    "cli_2000_watch_seconds": "make run defaults: jobs submit --count 2000 --watch (s)",
    "cli_300_watch_seconds": "make run defaults: jobs submit --count 300 --watch (s)",
    "idle_cpu_cores": "idle make run stack, 60 s after its last job (cores)",
    "idle_cpu_cores_server": "  server",
    "idle_cpu_cores_workers": "  workers",
    "idle_cpu_cores_envoy": "  Envoy",
    "idle_cpu_cores_flower": "  Flower",
    "idle_cpu_cores_postgres": "  PostgreSQL",
    "idle_cpu_cores_redis": "  Redis",
}

_BEGIN = "<!-- benchmarks:begin (written by `python -m benchmarks`; edit outside these markers) -->"
_END = "<!-- benchmarks:end -->"


@dataclass(frozen=True)
class Results:
    """Everything one run produced."""

    figures: dict[str, Figure]
    ratios: dict[str, float]
    targets: dict[str, bool]
    meta: dict[str, str | int | float | bool]


def summarise(
    samples: Samples,
    *,
    mode: str,
    plan: CpuPlan,
    duration_seconds: float,
    foreign_cpu: dict[str, float],
) -> Results:
    """Figures from samples, ratios of medians, and (full runs only) which targets are met."""
    figures = {name: Figure(name, tuple(values)) for name, values in samples.items() if values}
    ratios = {
        name: figures[top].median / figures[bottom].median
        for name, (top, bottom) in RATIOS.items()
        if top in figures and bottom in figures and figures[bottom].median
    }
    medians = {name: figure.median for name, figure in figures.items()} | ratios
    # Quick runs use small sizes, so judging them against the targets would mislead.
    verdicts = {target.key: target.met(medians) for target in TARGETS} if mode == "full" else {}
    targets = {key: met for key, met in verdicts.items() if met is not None}
    commit, dirty = git_commit()
    meta: dict[str, str | int | float | bool] = {
        "mode": mode,
        "git_commit": commit,
        "git_dirty": dirty,
        "cpu_count": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "machine": f"{platform.system()} {platform.release()} {platform.machine()}",
        "python": platform.python_version(),
        "cpu_plan": plan.describe(),
        "timestamp_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "duration_s": round(duration_seconds, 1),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
    }
    # CPU that other processes on the machine used meanwhile (0 on a quiet machine).
    meta |= {f"foreign_cpu_cores_{phase}": round(cores, 2) for phase, cores in foreign_cpu.items()}
    return Results(figures=figures, ratios=ratios, targets=targets, meta=meta)


def to_json(results: Results) -> dict[str, str | int | float | bool]:
    """The flat object written to results/*.json: median under the name, then _min and _max."""
    flat: dict[str, str | int | float | bool] = dict(results.meta)
    for name, figure in results.figures.items():
        flat[name] = _round(figure.median)
        flat[f"{name}_min"] = _round(figure.min)
        flat[f"{name}_max"] = _round(figure.max)
    flat |= {name: _round(value) for name, value in results.ratios.items()}
    flat |= {f"target_{name}_met": met for name, met in results.targets.items()}
    return flat


def write_json(results: Results, path: Path) -> None:
    """Write the flat JSON object."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_json(results), indent=2) + "\n")


def _round(value: float) -> float:
    return value if math.isnan(value) else round(value, 4)


def _show(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if 0 < abs(value) < 0.1:
        return f"{value:.3f}"  # an idle stack's cores
    return f"{value:.2f}"


def rows(results: Results) -> list[tuple[str, str, str, str, str, str, str]]:
    """(label, median, min, max, repeats, target, met) for every figure and ratio, in table order."""
    targets = {target.key: target.text for target in TARGETS} | FORMER_TARGETS
    names = [name for name in LABELS if name in results.figures or name in results.ratios]
    names += sorted(set(results.figures) - set(LABELS))
    table = []
    for name in names:
        target = targets.get(name, "")
        met = results.targets.get(name)
        verdict = "" if met is None else ("yes" if met else "NO")
        if name in results.figures:
            figure = results.figures[name]
            table.append(
                (
                    LABELS.get(name, name),
                    _show(figure.median),
                    _show(figure.min),
                    _show(figure.max),
                    str(len(figure.samples)),
                    target,
                    verdict,
                )
            )
        else:
            table.append((LABELS[name], _show(results.ratios[name]), "", "", "", target, verdict))
    return table


_HEADER = ("figure", "median", "min", "max", "n", "target", "met")


def print_table(results: Results) -> None:
    """The table on stdout."""
    table = [_HEADER, *rows(results)]
    widths = [max(len(row[column]) for row in table) for column in range(len(_HEADER))]
    for index, row in enumerate(table):
        cells = [
            cell.ljust(width) if column in (0, 5) else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        print("  ".join(cells).rstrip())
        if index == 0:
            print("  ".join("-" * width for width in widths))
    meta = results.meta
    print(
        f"\n{meta['mode']} run, commit {meta['git_commit']}{' (dirty)' if meta['git_dirty'] else ''}, "
        f"{meta['cpu_count']} x {meta['cpu_model']}, {meta['duration_s']} s; {meta['cpu_plan']}"
    )
    print(_foreign_note(results))
    if results.targets:
        met = sum(results.targets.values())
        print(f"targets met: {met} of {len(results.targets)}")


def _foreign_note(results: Results) -> str:
    prefix = "foreign_cpu_cores_"
    phases = {
        key.removeprefix(prefix): value
        for key, value in results.meta.items()
        if key.startswith(prefix) and key != f"{prefix}all"
    }
    shown = ", ".join(f"{phase} {cores}" for phase, cores in phases.items())
    return (
        f"CPU used by other processes on this machine meanwhile, in cores: "
        f"{results.meta.get(prefix + 'all', 'n/a')} on average ({shown})"
    )


def markdown_section(results: Results, stacks: dict[str, tuple[dict[str, str], str]]) -> str:
    """The generated part of BENCHMARKS.md: machine, table, and each phase's environment."""
    meta = results.meta
    lines = [
        _BEGIN,
        "",
        f"Latest {meta['mode']} run: {meta['timestamp_utc']}, commit `{meta['git_commit']}`"
        f"{' with uncommitted changes' if meta['git_dirty'] else ''}, {meta['duration_s']} s.",
        "",
        f"Machine: {meta['cpu_count']} x {meta['cpu_model']}, {meta['memory_gb']} GB RAM, "
        f"{meta['machine']}, Python {meta['python']}; {meta['cpu_plan']}.",
        "",
        "| " + " | ".join(_HEADER) + " |",
        "|---|" + "---:|" * 4 + "---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    lines += ["", _foreign_note(results) + "."]
    if results.targets:
        lines += ["", f"Targets met: {sum(results.targets.values())} of {len(results.targets)}."]
    lines += ["", "Each phase's stack ran with (besides DATABASE_URL, REDIS_URL and ports):", ""]
    for phase, (env, runs) in stacks.items():
        settings = " ".join(f"`{key}={value}`" for key, value in sorted(env.items()))
        lines.append(f"- **{phase}** ({runs}): {settings}")
    lines += ["", _END]
    return "\n".join(lines)


def write_markdown(path: Path, section: str) -> None:
    """Replace the generated section of BENCHMARKS.md, keeping everything written around it."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\n" + _BEGIN + "\n" + _END + "\n"
    begin, end = text.find(_BEGIN), text.find(_END)
    if begin < 0 or end < begin:
        text = text.rstrip("\n") + "\n\n" + _BEGIN + "\n" + _END + "\n"
        begin, end = text.find(_BEGIN), text.find(_END)
    path.write_text(text[:begin] + section + text[end + len(_END) :])
