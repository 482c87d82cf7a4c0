"""Garbage-collector settings for the long-running server and worker processes.

With thousands of open streams a process keeps over a million objects alive, and
CPython's default thresholds promote short-lived per-call objects into the oldest
generation, whose full collections then stop the server for long pauses (BENCHMARKS.md
has the figures). A larger first threshold lets per-call garbage die young, and freezing
what start-up allocated keeps it out of every later scan.
"""

from __future__ import annotations

import gc

# Allocations between young collections (CPython's default: 700), then the default ratios
# for the older generations, only less eager for the oldest.
_THRESHOLDS = (10_000, 20, 100)


def tune_for_long_running_process() -> None:
    """Call once start-up is done: freeze what exists, then collect less eagerly."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_THRESHOLDS)
