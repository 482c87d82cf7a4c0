"""The Celery app and its one task's contract: the queue, the task name and the wake-up entries.

Workers run this app (worker.app adds the task); servers only publish to its queue
(jobcore.wakeup_publisher). A message only says "these jobs are waiting": the jobs
themselves (and the truth about them) live in PostgreSQL. One message carries many jobs
when they arrive together (see server.dispatcher), so a busy service pays Celery's
per-message cost once per batch.

Wake-ups have priorities (server.dispatcher chooses them by the tenant's backlog): kombu's
Redis transport keeps one list per priority step and its consumer BRPOPs them in step order,
so a waiting message is taken only once the lists of more urgent steps are empty.
"""

from __future__ import annotations

import uuid
from bisect import bisect
from dataclasses import dataclass
from typing import Any

from celery import Celery

from jobcore.database import TCP_SILENT_LOSS_OPTIONS
from jobcore.settings import Settings

PROCESS_JOBS_TASK = "jobs.process_jobs"
JOBS_QUEUE = "jobs"

# kombu's Redis priority steps (its default): 0 is served first, 9 last. A message's priority
# (0 to 9) goes to the list of the step at or below it.
PRIORITY_STEPS = (0, 3, 6, 9)
TOP_PRIORITY = PRIORITY_STEPS[0]
LOWEST_PRIORITY = PRIORITY_STEPS[-1]
# Between the queue's name and its step in the name of the step's list (kombu's default).
PRIORITY_SEPARATOR = "\x06\x16"
# A broker lost in silence (packets dropped, no reset) is noticed by the worker within about
# BROKER_HEALTH_CHECK_SECONDS x 2 + 1 s, kombu's bound for its BRPOP connection (whose
# reply is waited for on the event loop, where no socket timeout applies), and every
# command it sends itself (acknowledgements, restores) fails within
# BROKER_SOCKET_TIMEOUT_SECONDS; the kernel's keepalive rules (jobcore.database) end a dead
# connection as well. Celery then reconnects until the broker answers again, and the
# messages it had not acknowledged come back after the visibility timeout.
BROKER_SOCKET_TIMEOUT_SECONDS = 5
BROKER_HEALTH_CHECK_SECONDS = 5


def priority_step(priority: int) -> int:
    """The step a priority is served at, by kombu's rule: the step at or below it, within 0 to 9."""
    clamped = min(max(priority, TOP_PRIORITY), LOWEST_PRIORITY)
    return PRIORITY_STEPS[bisect(PRIORITY_STEPS, clamped) - 1]


def queue_key(priority: int) -> str:
    """The Redis list that holds the jobs queue's messages of this priority, as kombu names it."""
    step = priority_step(priority)
    return JOBS_QUEUE if step == TOP_PRIORITY else f"{JOBS_QUEUE}{PRIORITY_SEPARATOR}{step}"


# Every list of the jobs queue, most urgent first.
QUEUE_KEYS = tuple(queue_key(step) for step in PRIORITY_STEPS)


@dataclass(frozen=True, slots=True)
class Wakeup:
    """One job to claim, with the trace context of the call that created or re-sent it.

    `priority` is the step its message was queued at; the worker gives the job a slot at
    the same urgency.
    """

    job_id: uuid.UUID
    traceparent: str | None = None
    priority: int = TOP_PRIORITY

    def to_message(self) -> dict[str, str | int]:
        """The JSON form inside a message."""
        message: dict[str, str | int] = {"job_id": str(self.job_id), "priority": self.priority}
        if self.traceparent:
            message["traceparent"] = self.traceparent
        return message

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> Wakeup:
        """Read one entry of a message (ValueError/KeyError if it is malformed).

        An entry without a priority (from a server older than priorities) is top priority,
        as every message was then.
        """
        traceparent = message.get("traceparent")
        priority = message.get("priority", TOP_PRIORITY)
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise ValueError(f"priority must be an integer, not {priority!r}")
        return cls(
            job_id=uuid.UUID(message["job_id"]),
            traceparent=traceparent if isinstance(traceparent, str) else None,
            priority=priority_step(priority),
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
            "socket_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
            "socket_connect_timeout": BROKER_SOCKET_TIMEOUT_SECONDS,
            "socket_keepalive": True,
            "socket_keepalive_options": TCP_SILENT_LOSS_OPTIONS,
            "health_check_interval": BROKER_HEALTH_CHECK_SECONDS,
            # Publishers (jobcore.wakeup_publisher) and consumers must agree on the lists.
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEPARATOR,
            # kombu BRPOPs every queue's step-0 list, then every queue's step-3 list, and so
            # on; this keeps the queues in their configured order within a step instead of
            # rotating them (there is one queue today).
            "queue_order_strategy": "priority",
        },
        worker_hijack_root_logger=False,
        enable_utc=True,
    )
    return app
