"""The Celery app: configured once here, used by the server to dispatch and by the worker to consume.

The broker message carries only the job id; the job itself lives in PostgreSQL.
"""

from __future__ import annotations

import uuid

from celery import Celery

from jobcore.settings import Settings
from jobcore.tracing import trace_headers

PROCESS_JOB_TASK = "jobs.process_job"
JOBS_QUEUE = "jobs"


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app wired to the configured broker, with at-least-once delivery settings."""
    app = Celery("jobs", broker=settings.broker_url, backend=settings.result_backend_url)
    app.conf.update(
        task_default_queue=JOBS_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # Outcomes are written to PostgreSQL; Celery's own result store would be a second truth.
        task_ignore_result=True,
        # Acknowledge after the task ran, so a worker that dies mid-job hands it back.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            # Fail fast at submit time rather than hang a client while Redis is down.
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.2,
            "visibility_timeout": settings.visibility_timeout_seconds,
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app


def dispatch(app: Celery, job_id: uuid.UUID) -> None:
    """Publish the message that wakes a worker for this job (blocking; call it off the event loop)."""
    # The trace context rides in the message headers, so the worker's span joins the trace.
    app.send_task(PROCESS_JOB_TASK, args=[str(job_id)], retry=False, headers=trace_headers())
