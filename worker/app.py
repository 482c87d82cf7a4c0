"""The worker's Celery app (`celery -A worker.app ...`): the shared app plus the job task."""

from __future__ import annotations

from typing import Any

import prometheus_client
from celery.signals import setup_logging, worker_init, worker_shutdown

from jobcore.celery_app import create_celery_app
from jobcore.gc_tuning import tune_for_long_running_process
from jobcore.logs import configure_logging
from jobcore.settings import get_settings
from jobcore.supervision import enable_fault_injection
from jobcore.tracing import configure_tracing
from worker.runtime import running_runtime

# Celery threads per worker process; each holds one message while its jobs wait for slots
# and are claimed. A more urgent message is taken only when one of them is free again.
CLAIMING_THREADS = 4

settings = get_settings()
# Before Celery starts: a production worker with the test hook set refuses to start.
enable_fault_injection(settings, process="worker")
app = create_celery_app(settings)
app.conf.update(
    # A task only claims its jobs and hands them to the process's asyncio loop, which
    # runs up to WORKER_CONCURRENCY of them: a few threads keep the loop supplied.
    worker_pool="threads",
    worker_concurrency=CLAIMING_THREADS,
    # No task events unless a monitor asks: Flower switches them on while it runs (every 5 s);
    # always on, publishing them takes a sizeable share of a busy worker (BENCHMARKS.md, item 8).
    worker_send_task_events=False,
)
app.autodiscover_tasks(["worker"], related_name="tasks", force=True)


@setup_logging.connect  # type: ignore[untyped-decorator]
def _use_our_logging(**_: Any) -> None:
    """Celery's records get the same format (and job ids) as everything else."""
    configure_logging(settings.log_level)


@worker_init.connect  # type: ignore[untyped-decorator]
def _serve_metrics_and_trace(**_: Any) -> None:
    """Only worker processes do this (Flower imports this app too, without this signal)."""
    configure_tracing("jobs-worker")
    tune_for_long_running_process()
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)


@worker_shutdown.connect  # type: ignore[untyped-decorator]
def _finish_running_jobs(**_: Any) -> None:
    """Warm shutdown: Celery has stopped taking messages; let the jobs already started end.

    A job cannot outlive its deadline; past it, the lease hands the job to another worker.
    """
    runtime = running_runtime()
    if runtime is not None:
        runtime.run(runtime.services.drain(timeout_seconds=settings.job_timeout_seconds + 5))
