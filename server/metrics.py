"""The server's Prometheus metrics (served on METRICS_PORT when it is set)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RPC_REQUESTS = Counter(
    "jobs_grpc_requests",
    "JobService calls handled, by method and final gRPC status code.",
    ["method", "code"],
)
RPC_DURATION = Histogram(
    "jobs_grpc_request_duration_seconds",
    "Time to handle a JobService call (for WatchJob: the stream's lifetime), by method.",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600),
)
WATCH_STREAMS_OPEN = Gauge("jobs_watch_streams_open", "WatchJob streams open right now.")
JOBS_SUBMITTED = Counter(
    "jobs_submitted", "Jobs accepted by SubmitJob (idempotent retries not counted).", ["operation"]
)
DISPATCH_BATCH_SIZE = Histogram(
    "jobs_dispatch_batch_size",
    "Jobs per published wake-up message (more than 1 when jobs arrive faster than publishing).",
    buckets=(1, 2, 5, 10, 20, 50, 100),
)
