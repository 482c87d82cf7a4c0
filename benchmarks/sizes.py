"""How big and how long each measurement is, for the full run and the quick (CI) run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Sizes:
    """Every size the runner uses; quick mode shrinks them but runs the same code paths."""

    mode: str
    repeats: int
    # Throughput windows: a warm-up first, then `repeats` windows of this length.
    warmup_seconds: float
    window_seconds: float
    in_flight: int
    channels: int
    celery_noop_tasks: int
    # R3 sends this many 2 s tasks per prefork process, so every repeat is a few full rounds.
    seed_model_rounds: int
    getstatus_calls: int
    getstatus_small_rows: int
    getstatus_large_rows: int
    watch_streams: int
    # Streams left open while events flow (the latency figure is for 10,000 watchers).
    watch_event_watchers: int
    watch_events_per_second: float
    lifecycle_delay0_jobs: int
    lifecycle_delay0_repeats: int
    bigjob_numbers: int
    # BatchSubmitJobs: jobs per call and calls in flight (the 1,000 and 8).
    batch_size: int
    batch_in_flight: int
    # Zero-delay jobs submitted in batches, submit to SUCCESS, per repeat.
    lifecycle_delay0_batch_jobs: int
    # `jobs submit --count N --watch` on a `make run` stack, timed this many times.
    cli_jobs: int
    cli_repeats: int
    # The idle stack: how long after its last job, and over how long, its CPU is measured.
    idle_wait_seconds: float
    idle_window_seconds: float


FULL = Sizes(
    mode="full",
    repeats=3,
    warmup_seconds=3.0,
    window_seconds=6.0,
    in_flight=128,
    channels=16,
    celery_noop_tasks=1500,
    seed_model_rounds=2,
    getstatus_calls=1000,
    getstatus_small_rows=10_000,
    getstatus_large_rows=1_000_000,
    watch_streams=50_000,
    watch_event_watchers=10_000,
    watch_events_per_second=500.0,
    lifecycle_delay0_jobs=20_000,
    # One batch of 20,000 (after a warm-up): at this service's rate more would not fit 10 minutes.
    lifecycle_delay0_repeats=1,
    bigjob_numbers=1_000_000,
    batch_size=1000,
    batch_in_flight=8,
    lifecycle_delay0_batch_jobs=20_000,
    cli_jobs=2000,
    cli_repeats=3,
    idle_wait_seconds=60.0,
    idle_window_seconds=15.0,
)

QUICK = Sizes(
    mode="quick",
    repeats=3,
    warmup_seconds=1.0,
    window_seconds=1.5,
    in_flight=128,
    channels=16,
    celery_noop_tasks=300,
    seed_model_rounds=1,
    getstatus_calls=300,
    getstatus_small_rows=2_000,
    getstatus_large_rows=20_000,
    watch_streams=500,
    watch_event_watchers=500,
    watch_events_per_second=500.0,
    lifecycle_delay0_jobs=500,
    lifecycle_delay0_repeats=2,
    bigjob_numbers=100_000,
    batch_size=1000,
    batch_in_flight=8,
    lifecycle_delay0_batch_jobs=2000,
    cli_jobs=300,
    cli_repeats=1,
    idle_wait_seconds=5.0,
    idle_window_seconds=3.0,
)
