"""The worker's Prometheus metrics (served on METRICS_PORT when it is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS_PROCESSED = Counter(
    "jobs_processed",
    "Attempts that ended, by operation and outcome "
    "(success, failed, timed_out, stopped: cancelled or claim lost).",
    ["operation", "outcome"],
)
PROCESSING_SECONDS = Histogram(
    "jobs_processing_seconds",
    "Time from claim to outcome of an attempt, simulated delay included, by operation.",
    ["operation"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 2.5, 3, 5, 10, 30, 60, 300),
)
JOBS_IN_FLIGHT = Gauge("jobs_in_flight", "Attempts running in this worker process right now.")
