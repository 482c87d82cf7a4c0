"""The worker's Celery app (`celery -A worker.app ...`): the shared app plus the job task."""

from __future__ import annotations

from typing import Any

import prometheus_client
from celery.signals import setup_logging, worker_init

from jobcore.logs import configure_logging
from jobcore.queue import create_celery_app
from jobcore.settings import get_settings
from jobcore.tracing import configure_tracing

settings = get_settings()
app = create_celery_app(settings)
app.conf.update(
    # Jobs spend their time waiting (the simulated delay, the database), so threads that
    # hand the work to one asyncio loop keep many jobs in flight per process.
    worker_pool="threads",
    worker_concurrency=settings.worker_concurrency,
    # Task events feed Flower's dashboard.
    worker_send_task_events=True,
    task_send_sent_event=True,
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
    if settings.metrics_port:
        prometheus_client.start_http_server(settings.metrics_port, addr=settings.metrics_host)
