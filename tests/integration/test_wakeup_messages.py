"""The wake-up message the server pushes itself is the message Celery's send_task would send."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import redis

from devstack.stack import Stack
from jobcore.celery_app import JOBS_QUEUE, PROCESS_JOBS_TASK, Wakeup, create_celery_app
from jobcore.settings import Settings
from jobcore.wakeup_publisher import WakeupPublisher

# A database of the test Redis that no worker consumes from.
_SPARE_DB = 15

# Differ between any two messages; everything else must match.
_PER_MESSAGE = {"id", "root_id", "correlation_id", "delivery_tag", "reply_to"}


def _spare_url(stack: Stack) -> str:
    return stack.redis_url.rsplit("/", 1)[0] + f"/{_SPARE_DB}"


def _comparable(raw: bytes | str) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    for section in ("headers", "properties"):
        for key in _PER_MESSAGE & message[section].keys():
            message[section][key] = "<per message>"
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_it_matches_what_kombu_publishes_for_the_same_task(stack: Stack) -> None:
    settings = Settings(redis_url=_spare_url(stack))
    app = create_celery_app(settings)
    wakeups = [
        Wakeup(uuid.uuid4(), "00-" + "1" * 32 + "-" + "2" * 16 + "-01"),
        Wakeup(uuid.uuid4()),
    ]
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(JOBS_QUEUE)
    try:
        app.send_task(
            PROCESS_JOBS_TASK,
            args=[[wakeup.to_message() for wakeup in wakeups]],
            ignore_result=True,
            argsrepr=f"[{len(wakeups)} jobs]",
        )
        publisher = WakeupPublisher(app, settings.broker_url)

        async def publish() -> None:
            try:
                await publisher.publish(wakeups)
            finally:
                await publisher.close()

        asyncio.run(publish())
        ours, kombus = client.lrange(JOBS_QUEUE, 0, -1)  # LPUSH: newest first
    finally:
        client.delete(JOBS_QUEUE)
        client.close()

    expected = _comparable(kombus)
    # kombu also copies send_task's options into the properties; workers ignore them.
    expected["properties"].pop("argsrepr", None)
    assert _comparable(ours) == expected
    assert _comparable(ours)["body"][0] == [[wakeup.to_message() for wakeup in wakeups]]
