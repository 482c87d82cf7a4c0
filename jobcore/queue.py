"""The Celery app and the wake-up message: configured here, published by servers, consumed by workers.

A message only says "these jobs are waiting": the jobs themselves (and the truth about
them) live in PostgreSQL. One message carries many jobs when they arrive together (see
server.dispatcher), so a busy service pays Celery's per-message cost once per batch.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio
from celery import Celery
from kombu import serialization

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


class WakeupPublisher:
    """Publishes wake-up messages from the event loop: one LPUSH onto the broker's Redis list.

    The message is the one `send_task` would send (Celery itself builds it), wrapped as
    kombu's Redis transport wraps messages. kombu's own publish blocks, so it would need a
    thread, whose CPU and GIL contention slow every call the server's loop serves
    (BENCHMARKS.md, item 3).
    """

    def __init__(self, app: Celery, broker_url: str) -> None:
        self._app = app
        self._redis = redis.asyncio.Redis.from_url(
            broker_url, socket_timeout=5, socket_connect_timeout=2
        )

    async def publish(self, wakeups: Sequence[Wakeup]) -> None:
        """Queue one message waking a worker for these jobs (redis errors propagate)."""
        await self._redis.lpush(JOBS_QUEUE, self.message(wakeups))

    async def waiting(self) -> int:
        """How many wake-up messages wait in the broker for a worker (redis errors propagate)."""
        return int(await self._redis.llen(JOBS_QUEUE))

    async def ping(self) -> None:
        """Raise (a redis error) unless the broker answers PING."""
        await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def message(self, wakeups: Sequence[Wakeup]) -> str:
        """The JSON envelope kombu's Redis transport would push for this task message."""
        task_id = str(uuid.uuid4())
        headers, properties, body, _ = self._app.amqp.create_task_message(
            task_id,
            PROCESS_JOBS_TASK,
            [[wakeup.to_message() for wakeup in wakeups]],
            {},
            # What monitors (Flower) show as the arguments: a count, not every id.
            argsrepr=f"[{len(wakeups)} jobs]",
            # The outcome lives in PostgreSQL; nobody waits for a Celery result.
            ignore_result=True,
        )
        content_type, content_encoding, payload = serialization.dumps(  # type: ignore[no-untyped-call]
            body, serializer="json"
        )
        encoded = payload if isinstance(payload, bytes) else payload.encode(content_encoding)
        return json.dumps(
            {
                "body": base64.b64encode(encoded).decode("ascii"),
                "content-encoding": content_encoding,
                "content-type": content_type,
                "headers": headers,
                "properties": {
                    **properties,
                    "delivery_mode": 2,  # persistent
                    "delivery_info": {"exchange": "", "routing_key": JOBS_QUEUE},
                    "priority": 0,
                    "body_encoding": "base64",
                    # kombu acknowledges (and, unacknowledged, restores) a message by this tag.
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )
