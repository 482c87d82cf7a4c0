"""Turns samples into figures, ratios and target checks; writes the JSON, the table and BENCHMARKS.md."""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from benchmarks.machine import CpuPlan, cpu_model, git_commit
from benchmarks.pinned import Samples
from benchmarks.stats import Figure


@dataclass(frozen=True)
class Target:
    """A target from the issue, judged on a figure's or ratio's median."""

    key: str
    text: str
    met: Callable[[float], bool]


# name: (numerator, denominator), both medians.
RATIOS: dict[str, tuple[str, str]] = {
    "ratio_submit_grpc_vs_echo": ("submit_grpc_c128_per_s", "echo_grpc_c128_per_s"),
    "ratio_submit_rest_vs_grpc": ("submit_rest_c128_per_s", "submit_grpc_c128_per_s"),
    "ratio_submit_grpc_auth_vs_noauth": ("submit_grpc_c128_per_s", "submit_grpc_noauth_c128_per_s"),
    "ratio_lifecycle_delay0_vs_celery_noop": (
        "lifecycle_delay0_per_s",
        "celery_noop_roundtrip_per_s",
    ),
    "ratio_lifecycle_delay2_vs_seed_model": ("lifecycle_delay2_per_s", "seed_model_delay2_per_s"),
    "ratio_bigjob_growth_vs_payload": ("bigjob_1m_max_growth_mb", "bigjob_1m_payload_mb"),
    "ratio_getstatus_1m_vs_10k": ("getstatus_p50_ms_1m", "getstatus_p50_ms_10k"),
}

TARGETS = [
    Target("ratio_submit_grpc_vs_echo", ">= 0.4 x R1", lambda value: value >= 0.4),
    Target("submit_grpc_c128_p99_ms", "< 100 ms", lambda value: value < 100),
    Target("ratio_submit_rest_vs_grpc", ">= 0.8 x gRPC", lambda value: value >= 0.8),
    Target("ratio_submit_grpc_auth_vs_noauth", ">= 0.9 x without auth", lambda value: value >= 0.9),
    Target("ratio_lifecycle_delay0_vs_celery_noop", ">= 1.5 x R2", lambda value: value >= 1.5),
    Target("lifecycle_delay2_per_s", ">= 300 jobs/s", lambda value: value >= 300),
    Target("watch_streams", ">= 10,000 streams", lambda value: value >= 10_000),
    Target("watch_kb_per_stream", "<= 40 KB", lambda value: value <= 40),
    Target("watch_event_p99_ms", "< 100 ms", lambda value: value < 100),
    Target("bigjob_1m_seconds", "< 2 s", lambda value: value < 2),
    Target("ratio_bigjob_growth_vs_payload", "<= 5 x payload", lambda value: value <= 5),
]

# Table order and labels; figures not listed follow at the end under their key.
LABELS: dict[str, str] = {
    "echo_grpc_c128_per_s": "R1 bare grpc.aio echo, 128 in flight (/s)",
    "echo_grpc_c128_p99_ms": "R1 echo p99 (ms)",
    "celery_noop_roundtrip_per_s": "R2 bare Celery no-op round trip, prefork (/s)",
    "seed_model_delay2_per_s": "R3 seed model: 2 s task, prefork (/s)",
    "submit_grpc_c128_per_s": "SubmitJob gRPC, 128 in flight (/s)",
    "submit_grpc_c128_p99_ms": "SubmitJob gRPC p99 (ms)",
    "ratio_submit_grpc_vs_echo": "  ratio SubmitJob gRPC / R1",
    "submit_grpc_noauth_c128_per_s": "SubmitJob gRPC without authentication (/s)",
    "submit_grpc_noauth_c128_p99_ms": "  without authentication p99 (ms)",
    "ratio_submit_grpc_auth_vs_noauth": "  ratio with / without authentication",
    "submit_rest_c128_per_s": "SubmitJob REST via Envoy, 128 in flight (/s)",
    "submit_rest_c128_p99_ms": "SubmitJob REST p99 (ms)",
    "ratio_submit_rest_vs_grpc": "  ratio REST / gRPC",
    "lifecycle_delay0_per_s": "submit->SUCCESS, delay 0, batch (/s)",
    "ratio_lifecycle_delay0_vs_celery_noop": "  ratio lifecycle delay 0 / R2",
    "lifecycle_delay2_per_s": "submit->SUCCESS, delay 2 s, sustained (/s)",
    "ratio_lifecycle_delay2_vs_seed_model": "  ratio lifecycle delay 2 s / R3",
    "watch_streams": "WatchJob streams open on one server",
    "watch_kb_per_stream": "server RSS per open stream (KB)",
    "watch_event_p99_ms": "event commit->watcher p99 (ms)",
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
    targets = (
        {t.key: t.met(medians[t.key]) for t in TARGETS if t.key in medians}
        if mode == "full"
        else {}
    )
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
    return f"{value:.2f}"


def rows(results: Results) -> list[tuple[str, str, str, str, str, str, str]]:
    """(label, median, min, max, repeats, target, met) for every figure and ratio, in table order."""
    targets = {target.key: target for target in TARGETS}
    names = [name for name in LABELS if name in results.figures or name in results.ratios]
    names += sorted(set(results.figures) - set(LABELS))
    table = []
    for name in names:
        target = targets[name].text if name in targets else ""
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


def markdown_section(
    results: Results, envs: dict[str, dict[str, str]], workers: dict[str, int]
) -> str:
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
    for phase, env in envs.items():
        settings = " ".join(f"`{key}={value}`" for key, value in sorted(env.items()))
        lines.append(f"- **{phase}** ({workers[phase]} worker processes): {settings}")
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
