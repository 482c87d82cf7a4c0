"""WatchJob without a database: heartbeats from the hub's one clock, notifications routed by job id."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from jobcore.errors import ServiceShuttingDownError
from jobcore.events import HEARTBEAT, JobEventHub
from jobcore.models import Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.store import JobStore
from server.watch import WatchUpdate, follow_job

BEAT = timedelta(milliseconds=200)
START = datetime(2026, 1, 1, tzinfo=UTC)


def _hub() -> JobEventHub:
    """A hub that is never started: tests feed it notifications as asyncpg would."""
    return JobEventHub("postgresql+asyncpg://nobody@localhost/none")


def _payload(job_id: uuid.UUID, sequence: int, status: JobStatus) -> str:
    """A notification as the job_events trigger sends it (row_to_json, columns in table order)."""
    final = status in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED)
    row = {
        "job_id": str(job_id),
        "sequence": sequence,
        "status": status.value,
        "occurred_at": (START + timedelta(seconds=sequence)).isoformat(),
        "attempt": 1,
        "traceparent": None,
        "result": 4.0 if final else None,
        "error": None,
    }
    return json.dumps(row, separators=(",", ":"))


def _notify(hub: JobEventHub, payload: str) -> None:
    hub._on_notification(None, 0, "job_events", payload)


class _Store:
    """Just what follow_job reads: the job now, and events after a sequence."""

    def __init__(self, job: Job, events: list[JobEvent] | None = None) -> None:
        self.job = job
        self.events = events or []

    async def get(self, job_id: uuid.UUID) -> Job:
        return self.job

    async def events_after(self, job_id: uuid.UUID, sequence: int) -> list[JobEvent]:
        return [event for event in self.events if event.sequence > sequence]


def _job(job_id: uuid.UUID) -> Job:
    return Job(
        id=job_id,
        status=JobStatus.PENDING,
        operation=Operation.SQUARE_SUM,
        created_at=START,
        updated_at=START,
        sequence=1,
        outcome=None,
    )


def _event(job_id: uuid.UUID, sequence: int, status: JobStatus) -> JobEvent:
    final = status in (JobStatus.SUCCESS, JobStatus.FAILED, JobStatus.CANCELLED)
    return JobEvent(
        job_id=job_id,
        sequence=sequence,
        status=status,
        occurred_at=START + timedelta(seconds=sequence),
        outcome=Outcome(result=4.0) if final else None,
        attempts=1,
    )


def _follow(hub: JobEventHub, store: _Store, job_id: uuid.UUID) -> AsyncGenerator[WatchUpdate]:
    return follow_job(hub, cast(JobStore, store), job_id, heartbeat=BEAT)


async def test_an_idle_inbox_gets_heartbeats_every_interval_the_first_one_sooner() -> None:
    hub = _hub()
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as inbox:
        started = time.monotonic()
        first = await asyncio.wait_for(inbox.get(), 5)
        first_after = time.monotonic() - started
        second = await asyncio.wait_for(inbox.get(), 5)
        second_after = time.monotonic() - started - first_after
    await hub.stop()

    assert first is HEARTBEAT
    assert second is HEARTBEAT
    # The first within the interval, then one per interval; late by a tick plus scheduling.
    assert first_after < 1.5 * BEAT.total_seconds()
    assert BEAT.total_seconds() <= second_after < 1.5 * BEAT.total_seconds()


async def test_streams_opened_together_do_not_beat_together() -> None:
    hub = _hub()
    with contextlib.ExitStack() as subscriptions:
        started = time.monotonic()
        inboxes = [
            subscriptions.enter_context(hub.subscribe(uuid.uuid4(), heartbeat=BEAT))
            for _ in range(200)
        ]
        beats: list[float] = []
        for inbox in inboxes:
            assert await asyncio.wait_for(inbox.get(), 5) is HEARTBEAT
            beats.append(inbox.quiet_since - started)  # when the heartbeat was queued
    await hub.stop()

    # Spread over the interval (200 uniform draws all within half of it: never).
    assert max(beats) - min(beats) > BEAT.total_seconds() / 2


async def test_every_change_restarts_the_quiet_interval() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    with hub.subscribe(job_id, heartbeat=BEAT) as inbox:
        assert await asyncio.wait_for(inbox.get(), 5) is HEARTBEAT  # the first comes sooner
        for sequence in (2, 3, 4, 5):
            await asyncio.sleep(BEAT.total_seconds() * 0.6)
            _notify(hub, _payload(job_id, sequence, JobStatus.IN_PROGRESS))
        last_change = time.monotonic()
        items = [await asyncio.wait_for(inbox.get(), 5) for _ in range(5)]
        quiet = time.monotonic() - last_change
    await hub.stop()

    assert [getattr(item, "sequence", item) for item in items] == [2, 3, 4, 5, HEARTBEAT]
    assert quiet >= BEAT.total_seconds()


async def test_a_reader_that_falls_behind_gets_one_heartbeat_not_a_pile() -> None:
    hub = _hub()
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as inbox:
        await asyncio.sleep(BEAT.total_seconds() * 3.5)
        queued = inbox.qsize()
    await hub.stop()

    assert queued == 1


async def test_an_inbox_without_heartbeat_gets_none() -> None:
    hub = _hub()
    with hub.subscribe(uuid.uuid4()) as inbox:
        await asyncio.sleep(BEAT.total_seconds() * 1.5)
        queued = inbox.qsize()
    await hub.stop()

    assert queued == 0


async def test_notifications_reach_only_the_watchers_of_their_job() -> None:
    hub = _hub()
    watched, other = uuid.uuid4(), uuid.uuid4()
    with hub.subscribe(watched) as first, hub.subscribe(watched) as second:
        _notify(hub, _payload(other, 2, JobStatus.IN_PROGRESS))
        _notify(hub, _payload(watched, 2, JobStatus.IN_PROGRESS))
        got = [first.get_nowait(), second.get_nowait()]
        left = first.qsize() + second.qsize()
    await hub.stop()

    assert got == [_event(watched, 2, JobStatus.IN_PROGRESS)] * 2
    assert left == 0
    assert hub.watcher_count == 0


async def test_a_notification_for_an_unwatched_job_is_not_parsed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = _hub()
    watched = uuid.uuid4()
    broken = '{"job_id":"%s","sequence":"not a number"'  # truncated JSON
    with caplog.at_level(logging.ERROR), hub.subscribe(watched) as inbox:
        _notify(hub, broken % uuid.uuid4())
        quiet_for_others = not caplog.records
        _notify(hub, broken % watched)
        queued = inbox.qsize()
    await hub.stop()

    assert quiet_for_others
    assert "malformed" in caplog.text
    assert queued == 0


async def test_a_notification_without_the_expected_layout_is_still_delivered() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    row: dict[str, Any] = json.loads(_payload(job_id, 2, JobStatus.IN_PROGRESS))
    reordered = json.dumps(dict(reversed(list(row.items()))), indent=1)
    with hub.subscribe(job_id) as inbox:
        _notify(hub, reordered)
        item = inbox.get_nowait()
    await hub.stop()

    assert item == _event(job_id, 2, JobStatus.IN_PROGRESS)


async def test_follow_job_sends_the_snapshot_heartbeats_then_each_change_once() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    store = _Store(_job(job_id))
    updates = _follow(hub, store, job_id)
    snapshot = await anext(updates)
    beat = await asyncio.wait_for(anext(updates), 5)
    _notify(hub, _payload(job_id, 2, JobStatus.IN_PROGRESS))
    _notify(hub, _payload(job_id, 2, JobStatus.IN_PROGRESS))  # at least once: a repeat
    _notify(hub, _payload(job_id, 3, JobStatus.SUCCESS))
    rest = [update async for update in updates]
    await hub.stop()

    assert (snapshot.job.sequence, snapshot.heartbeat) == (1, False)
    assert (beat.job.sequence, beat.heartbeat) == (1, True)
    assert [(u.job.sequence, u.job.status, u.heartbeat) for u in rest] == [
        (2, JobStatus.IN_PROGRESS, False),
        (3, JobStatus.SUCCESS, False),
    ]
    assert hub.watcher_count == 0


async def test_follow_job_fills_a_gap_from_the_database() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    store = _Store(
        _job(job_id),
        [_event(job_id, 2, JobStatus.IN_PROGRESS), _event(job_id, 3, JobStatus.SUCCESS)],
    )
    updates = _follow(hub, store, job_id)
    await anext(updates)
    _notify(hub, _payload(job_id, 3, JobStatus.SUCCESS))  # sequence 2 was missed
    rest = [update.job.sequence async for update in updates]
    await hub.stop()

    assert rest == [2, 3]


async def test_follow_job_ends_with_an_error_when_the_server_shuts_down() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    updates = _follow(hub, _Store(_job(job_id)), job_id)
    await anext(updates)
    next_update = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0)
    await hub.stop()

    with pytest.raises(ServiceShuttingDownError):
        await asyncio.wait_for(next_update, 5)
