"""Celery tasks: thin and idempotent; the work itself is in worker.execution."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from celery import Task

from jobcore.queue import PROCESS_JOB_TASK
from jobcore.tracing import context_from
from worker.app import app, settings
from worker.execution import execute_job
from worker.runtime import get_runtime

logger = logging.getLogger(__name__)


def _message_headers(task: Task) -> dict[str, str]:
    """The headers the message carried (Celery exposes custom ones as request attributes)."""
    request = task.request
    headers = dict(getattr(request, "headers", None) or {})
    for name in ("traceparent", "tracestate"):
        value = getattr(request, name, None)
        if isinstance(value, str):
            headers.setdefault(name, value)
    return headers


@app.task(name=PROCESS_JOB_TASK, bind=True)  # type: ignore[untyped-decorator]
def process_job(self: Task, job_id: str) -> None:
    """Run the job with this id; safe to deliver more than once."""
    runtime = get_runtime(settings)
    runtime.run(
        execute_job(
            runtime.services,
            uuid.UUID(job_id),
            delay=timedelta(seconds=settings.simulated_delay_seconds),
            deadline=timedelta(seconds=settings.job_timeout_seconds),
            trace_context=context_from(_message_headers(self)),
        )
    )
