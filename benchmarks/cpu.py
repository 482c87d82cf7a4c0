"""CPU used by sets of processes, from psutil: what a job, a no-op task or an idle stack costs.

A process set is given by its roots; every descendant counts too, and so does the CPU of
descendants that exited and were reaped meanwhile (PostgreSQL's backends come and go): each
process's own user + system time plus its reaped children's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import psutil


def cpu_seconds(roots: Iterable[int]) -> float:
    """CPU seconds the processes `roots` and all their descendants have used so far."""
    seen: set[int] = set()
    total = 0.0
    for pid in roots:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for process in [root, *root.children(recursive=True)]:
                if process.pid in seen:
                    continue
                seen.add(process.pid)
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = process.cpu_times()
                    total += times.user + times.system + times.children_user
                    total += times.children_system
    return total


class CpuMeter:
    """CPU seconds of a process set between start() and each reading."""

    def __init__(self, roots: Iterable[int]) -> None:
        self._roots = tuple(roots)
        self._start = 0.0

    def start(self) -> None:
        """Start (or restart) counting from now."""
        self._start = cpu_seconds(self._roots)

    def used(self) -> float:
        """CPU seconds used since start()."""
        return cpu_seconds(self._roots) - self._start


# Named groups of processes: ("server", (pid,)), ("workers", (pid, pid)), ...
Parts = tuple[tuple[str, tuple[int, ...]], ...]


class PartsMeter:
    """CPU seconds of each named part of a process set between start() and a reading."""

    def __init__(self, parts: Parts) -> None:
        self._meters = {name: CpuMeter(pids) for name, pids in parts}

    def start(self) -> None:
        """Start (or restart) counting from now."""
        for meter in self._meters.values():
            meter.start()

    def used(self) -> dict[str, float]:
        """CPU seconds of each part since start()."""
        return {name: meter.used() for name, meter in self._meters.items()}
