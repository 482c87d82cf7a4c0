"""The Celery app and its one task's contract: the queue, the task name and the wake-up entries.

Workers run this app (worker.app adds the task); servers only publish to its queue
(jobcore.wakeup_publisher). A message only says "these jobs are waiting": the jobs
themselves (and the truth about them) live in PostgreSQL. One message carries many jobs
when they arrive together (see server.dispatcher), so a busy service pays Celery's
per-message cost once per batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from celery import Celery

from jobcore.settings import Settings

PROCESS_JOBS_TASK = "jobs.process_jobs"
JOBS_QUEUE = "jobs"


@dataclass(frozen=True, slots=True)
class Wakeup:
    """One job to claim, with the trace context of the call that created or re-sent it."""

    job_id: uuid.UUID
    traceparent: str | None = None

    def to_message(self) -> dict[str, str]:
        """The JSON form inside a message."""
        message = {"job_id": str(self.job_id)}
        if self.traceparent:
            message["traceparent"] = self.traceparent
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Wakeup:
        """Read one entry of a message (ValueError/KeyError if it is malformed)."""
        traceparent = message.get("traceparent")
        return cls(
            job_id=uuid.UUID(message["job_id"]),
            traceparent=traceparent if isinstance(traceparent, str) else None,
        )


def create_celery_app(settings: Settings) -> Celery:
    """A Celery app wired to the configured broker, with at-least-once delivery settings."""
    app = Celery("jobs", broker=settings.broker_url, backend=settings.result_backend_url)
    app.conf.update(
        task_default_queue=JOBS_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        # Outcomes are written to PostgreSQL; Celery's own result store would be a second truth.
        task_ignore_result=True,
        # Acknowledge once the task ran (the jobs are claimed), so a worker that dies
        # before claiming hands the message back.
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
