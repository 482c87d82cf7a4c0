"""Summaries of repeated measurements: median with min and max, and latency percentiles."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Figure:
    """One named figure and its repeats; the median is the headline, min and max show the spread."""

    name: str
    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        """The middle repeat (robust against one disturbed run)."""
        return float(statistics.median(self.samples))

    @property
    def min(self) -> float:
        """The lowest repeat."""
        return min(self.samples)

    @property
    def max(self) -> float:
        """The highest repeat."""
        return max(self.samples)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile: a latency some request really had, never an interpolation."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]
