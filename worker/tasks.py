"""Celery tasks: thin and idempotent; the work itself is in worker.execution."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from jobcore.celery_app import PROCESS_JOBS_TASK, Wakeup
from worker.app import app, settings
from worker.execution import start_jobs
from worker.runtime import get_runtime

logger = logging.getLogger(__name__)


def _wakeups(messages: list[Any]) -> list[Wakeup]:
    """The well-formed entries of a message; a bad entry is logged, not retried forever."""
    wakeups = []
    for message in messages:
        try:
            wakeups.append(Wakeup.from_message(message))
        except (TypeError, ValueError, KeyError, AttributeError):
            logger.error("ignoring a malformed wake-up: %.200r", message)
    return wakeups


@app.task(name=PROCESS_JOBS_TASK)  # type: ignore[untyped-decorator]
def process_jobs(messages: list[Any]) -> None:
    """Claim these jobs and start them; return (so the message is acked) once each is claimed.

    From its claim on, a job is guarded by its lease in PostgreSQL, not by this message.
    Safe to deliver more than once: a job that is not PENDING is skipped.
    """
    runtime = get_runtime(settings)
    runtime.run(
        start_jobs(
            runtime.services,
            _wakeups(messages),
            delay=timedelta(seconds=settings.simulated_delay_seconds),
            deadline=timedelta(seconds=settings.job_timeout_seconds),
        )
    )
