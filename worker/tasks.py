"""Celery tasks: thin and idempotent; the work itself is in worker.execution."""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

from jobcore.queue import PROCESS_JOB_TASK
from worker.app import app, settings
from worker.execution import execute_job
from worker.runtime import get_runtime

logger = logging.getLogger(__name__)


@app.task(name=PROCESS_JOB_TASK)  # type: ignore[untyped-decorator]
def process_job(job_id: str) -> None:
    """Run the job with this id; safe to deliver more than once."""
    runtime = get_runtime(settings)
    runtime.run(
        execute_job(
            runtime.services,
            uuid.UUID(job_id),
            delay=timedelta(seconds=settings.simulated_delay_seconds),
            deadline=timedelta(seconds=settings.job_timeout_seconds),
        )
    )
