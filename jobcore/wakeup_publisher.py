"""Publishes wake-up messages from the server's event loop: one LPUSH onto the broker's list.

The message is built by hand in the format of the pinned Celery and kombu (pyproject.toml:
celery 5.7, kombu 5.7): Celery builds the task message itself (`create_task_message`), and
this module wraps it as kombu's Redis transport does. kombu's own publish blocks, so it
would need a thread, whose CPU and GIL contention slow every call the server's loop serves
(BENCHMARKS.md, item 3). Upgrading either package means checking this envelope again:
tests/integration/test_wakeup_messages.py compares it with what `send_task` pushes and has
the real worker of the pinned version run a message built here.

A message goes onto the list of its priority step (jobcore.celery_app.queue_key), where
kombu's consumer looks for it in step order.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Sequence

import redis.asyncio
from celery import Celery
from kombu import serialization
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from jobcore.celery_app import (
    JOBS_QUEUE,
    PROCESS_JOBS_TASK,
    QUEUE_KEYS,
    Wakeup,
    priority_step,
    queue_key,
)

# How many job ids a message's argsrepr names (Flower shows it as the task's arguments).
ARGSREPR_JOB_IDS = 3
# A broker that has not connected, or answered a command, within this counts as down: each
# call fails (a redis TimeoutError) instead of waiting on a network that drops packets in
# silence. Nothing here is retried: a failed publish hands its jobs to maintenance, which
# sends them again (and any server's sweep can), so a retry would only hold up the
# dispatcher, and with it every wake-up queued behind, for longer. An LPUSH or an LLEN
# takes well under a millisecond on a live broker.
BROKER_TIMEOUT_SECONDS = 2.0


def wakeup_argsrepr(wakeups: Sequence[Wakeup]) -> str:
    """What monitors (Flower) show as a message's arguments: the count and the first few job ids.

    Not every id: a message carries up to a hundred jobs, and Flower keeps this per task.
    """
    ids = [str(wakeup.job_id) for wakeup in wakeups[:ARGSREPR_JOB_IDS]]
    if len(wakeups) > ARGSREPR_JOB_IDS:
        ids.append("...")
    noun = "job" if len(wakeups) == 1 else "jobs"
    return f"[{len(wakeups)} {noun}: {', '.join(ids)}]"


def message_priority(wakeups: Sequence[Wakeup]) -> int:
    """The priority step of a message: that of its most urgent job (0 is the most urgent)."""
    return priority_step(min(wakeup.priority for wakeup in wakeups))


class WakeupPublisher:
    """One LPUSH per message, through its own asyncio Redis pool (also asked for health)."""

    def __init__(self, app: Celery, broker_url: str) -> None:
        self._app = app
        self._redis = redis.asyncio.Redis.from_url(
            broker_url,
            socket_timeout=BROKER_TIMEOUT_SECONDS,
            socket_connect_timeout=BROKER_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )

    async def publish(self, wakeups: Sequence[Wakeup]) -> None:
        """Queue one message waking a worker for these (one or more) jobs, on the list of its
        priority (redis errors propagate)."""
        await self._redis.lpush(queue_key(message_priority(wakeups)), self.message(wakeups))

    async def waiting(self) -> int:
        """How many wake-up messages wait in the broker for a worker, at every priority (redis
        errors propagate)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in QUEUE_KEYS:
                pipe.llen(key)
            lengths = await pipe.execute()
        return sum(int(length) for length in lengths)

    async def ping(self) -> None:
        """Raise (a redis error) unless the broker answers PING."""
        await self._redis.ping()

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()

    def message(self, wakeups: Sequence[Wakeup]) -> str:
        """The JSON envelope kombu's Redis transport would push for this task message."""
        task_id = str(uuid.uuid4())
        priority = message_priority(wakeups)
        headers, properties, body, _ = self._app.amqp.create_task_message(
            task_id,
            PROCESS_JOBS_TASK,
            [[wakeup.to_message() for wakeup in wakeups]],
            {},
            argsrepr=wakeup_argsrepr(wakeups),
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
                    # kombu restores an unacknowledged message to its priority's list by this.
                    "priority": priority,
                    "body_encoding": "base64",
                    # kombu acknowledges (and, unacknowledged, restores) a message by this tag.
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )
