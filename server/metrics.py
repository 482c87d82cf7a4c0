"""The server's Prometheus metrics (served on METRICS_PORT when it is set)."""

from __future__ import annotations

import functools

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


# Labelled children looked up once: `labels()` takes a lock and builds its key on every call,
# and these are counted on every call.
@functools.cache
def rpc_requests(method: str, code: str) -> Counter:
    """RPC_REQUESTS' counter of `method` calls that ended with `code`."""
    return RPC_REQUESTS.labels(method, code)


@functools.cache
def rpc_duration(method: str) -> Histogram:
    """RPC_DURATION's histogram of `method`."""
    return RPC_DURATION.labels(method)


@functools.cache
def jobs_submitted(operation: str) -> Counter:
    """JOBS_SUBMITTED's counter of `operation` jobs."""
    return JOBS_SUBMITTED.labels(operation)
