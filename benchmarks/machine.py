"""What machine and commit a run measured, and which CPUs the load generator and the service get."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
_MIN_CPUS_TO_PIN = 4


@dataclass(frozen=True)
class CpuPlan:
    """CPU sets for the load generator and the service; None leaves that side unpinned."""

    load_generator: frozenset[int] | None
    service: frozenset[int] | None

    def describe(self) -> str:
        """One line for the report."""

        def show(cpus: frozenset[int] | None) -> str:
            return "all" if cpus is None else ",".join(str(cpu) for cpu in sorted(cpus))

        return f"load generator on CPU {show(self.load_generator)}, service on CPU {show(self.service)}"


def cpu_plan(*, pin: bool) -> CpuPlan:
    """Keep the load generator off the service's CPUs where there are enough of them.

    With 4 or more CPUs the last quarter runs the load generator and the service gets
    the rest. With fewer, any split starves one side: on 2 cores, pinning the load
    generator to one CPU measured 10-25% slower for R1 than leaving both unpinned.
    """
    available = sorted(os.sched_getaffinity(0))
    if not pin or len(available) < _MIN_CPUS_TO_PIN:
        return CpuPlan(load_generator=None, service=None)
    split = len(available) - len(available) // 4
    return CpuPlan(
        load_generator=frozenset(available[split:]), service=frozenset(available[:split])
    )


def pin_process_tree(pid: int, cpus: frozenset[int]) -> None:
    """Pin every thread of a process and of its descendants (affinity is per thread on Linux)."""
    root = psutil.Process(pid)
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            for thread in process.threads():
                # A thread may exit between listing and pinning; that is fine.
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(thread.id, cpus)


def git_commit() -> tuple[str, bool]:
    """The checked-out commit and whether the work tree has uncommitted changes."""

    def git(*args: str) -> str:
        completed = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return completed.stdout.strip()

    # The results this harness writes do not make the code under test dirty.
    dirty = git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results")
    return git("rev-parse", "--short=12", "HEAD") or "unknown", bool(dirty)


def cpu_model() -> str:
    """The CPU's marketing name (Linux), else what platform knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def rss_bytes(pid: int) -> int:
    """Resident memory of one process right now."""
    return int(psutil.Process(pid).memory_info().rss)


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all CPUs)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


class ForeignCpu(threading.Thread):
    """Measures the CPU that processes outside this run use, in cores, per phase.

    On a shared machine other people's tests steal CPU from the service and the load
    generator alike; the report shows how much, so figures can be read with that in mind.
    Approximate: CPU of our processes that exit within an interval counts as foreign.
    """

    def __init__(self, *, interval_seconds: float = 1.0) -> None:
        super().__init__(name="foreign-cpu", daemon=True)
        self._interval = interval_seconds
        self._stop_event = threading.Event()
        self._me = psutil.Process()
        self.phase = "start"
        self.samples: list[tuple[str, float]] = []

    def _ours(self) -> dict[int, float]:
        seconds: dict[int, float] = {}
        for process in [self._me, *self._me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[process.pid] = times.user + times.system
        return seconds

    def run(self) -> None:
        busy, ours = _busy_seconds(), self._ours()
        while not self._stop_event.wait(self._interval):
            now_busy, now_ours = _busy_seconds(), self._ours()
            used_by_us = sum(now_ours[pid] - ours.get(pid, 0.0) for pid in now_ours)
            foreign = max(0.0, (now_busy - busy) - used_by_us) / self._interval
            self.samples.append((self.phase, foreign))
            busy, ours = now_busy, now_ours

    def stop(self) -> None:
        """Stop sampling (idempotent)."""
        self._stop_event.set()
        if self.is_alive():
            self.join()

    def by_phase(self) -> dict[str, float]:
        """Mean foreign CPU, in cores, for each phase and for the whole run ("all")."""
        means: dict[str, float] = {}
        for phase in dict.fromkeys(phase for phase, _ in self.samples):
            values = [cores for name, cores in self.samples if name == phase]
            means[phase] = sum(values) / len(values)
        if self.samples:
            means["all"] = sum(cores for _, cores in self.samples) / len(self.samples)
        return means
