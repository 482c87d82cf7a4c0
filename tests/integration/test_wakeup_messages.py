"""The wake-up message the server pushes itself is the message Celery's send_task would send,
on the list kombu would push it to for its priority."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import Any

import pytest
import redis

from devstack.stack import Stack
from jobcore.celery_app import (
    PRIORITY_STEPS,
    PROCESS_JOBS_TASK,
    QUEUE_KEYS,
    Wakeup,
    create_celery_app,
    queue_key,
)
from jobcore.settings import Settings
from jobcore.wakeup_publisher import WakeupPublisher, wakeup_argsrepr

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


@pytest.mark.parametrize("priority", PRIORITY_STEPS)
def test_it_matches_what_kombu_publishes_for_the_same_task(stack: Stack, priority: int) -> None:
    settings = Settings(redis_url=_spare_url(stack))
    app = create_celery_app(settings)
    wakeups = [
        Wakeup(uuid.uuid4(), "00-" + "1" * 32 + "-" + "2" * 16 + "-01", priority),
        Wakeup(uuid.uuid4(), priority=priority),
    ]
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(*QUEUE_KEYS)
    try:
        app.send_task(
            PROCESS_JOBS_TASK,
            args=[[wakeup.to_message() for wakeup in wakeups]],
            ignore_result=True,
            argsrepr=wakeup_argsrepr(wakeups),
            priority=priority,
        )
        publisher = WakeupPublisher(app, settings.broker_url)

        async def publish() -> None:
            try:
                await publisher.publish(wakeups)
            finally:
                await publisher.close()

        asyncio.run(publish())
        # Both on the list of their priority (LPUSH: newest first), none on another.
        ours, kombus = client.lrange(queue_key(priority), 0, -1)
        assert sum(client.llen(key) for key in QUEUE_KEYS) == 2
    finally:
        client.delete(*QUEUE_KEYS)
        client.close()

    expected = _comparable(kombus)
    # kombu also copies send_task's options into the properties; workers ignore them.
    expected["properties"].pop("argsrepr", None)
    assert _comparable(ours) == expected
    assert _comparable(ours)["properties"]["priority"] == priority
    assert _comparable(ours)["body"][0] == [[wakeup.to_message() for wakeup in wakeups]]
    # What Flower shows as the task's arguments.
    assert _comparable(ours)["headers"]["argsrepr"] == (
        f"[2 jobs: {wakeups[0].job_id}, {wakeups[1].job_id}]"
    )


def test_waiting_counts_the_messages_of_every_priority(stack: Stack) -> None:
    settings = Settings(redis_url=_spare_url(stack))
    publisher = WakeupPublisher(create_celery_app(settings), settings.broker_url)
    client = redis.Redis.from_url(settings.broker_url)
    client.delete(*QUEUE_KEYS)

    async def publish_and_count() -> int:
        try:
            for priority in PRIORITY_STEPS:
                await publisher.publish([Wakeup(uuid.uuid4(), priority=priority)])
            await publisher.publish([Wakeup(uuid.uuid4())])
            return await publisher.waiting()
        finally:
            await publisher.close()

    try:
        assert asyncio.run(publish_and_count()) == len(PRIORITY_STEPS) + 1
        assert [client.llen(key) for key in QUEUE_KEYS] == [2, 1, 1, 1]
    finally:
        client.delete(*QUEUE_KEYS)
        client.close()


def test_flower_is_shown_the_first_job_ids_and_the_count() -> None:
    wakeups = [Wakeup(uuid.UUID(int=n)) for n in range(1, 6)]
    first, second, third = (str(wakeup.job_id) for wakeup in wakeups[:3])

    assert wakeup_argsrepr(wakeups[:1]) == f"[1 job: {first}]"
    assert wakeup_argsrepr(wakeups) == f"[5 jobs: {first}, {second}, {third}, ...]"
