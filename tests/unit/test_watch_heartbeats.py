"""WatchJob without a database: heartbeats from the hub's one clock, notifications routed by job id.

Heartbeats are timed by a fake clock that moves only when a test advances it, so every
timing below is exact and the same on a loaded host as on an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, cast

import pytest

from jobcore.errors import ServiceShuttingDownError
from jobcore.events import (
    _HEARTBEAT_TICKS_PER_INTERVAL,
    _HEARTBEATS_PER_STEP,
    HEARTBEAT,
    RESYNC,
    Inbox,
    JobEventHub,
    LoopClock,
)
from jobcore.models import Job, JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.store import JobStore
from server.watch import WatchUpdate, follow_job

# A power of two, so fake times stay exact binary fractions however the interval is divided.
BEAT = timedelta(seconds=16)
BEAT_SECONDS = BEAT.total_seconds()
# How late a heartbeat may come: the clock files beats under ticks this far apart.
TICK_SECONDS = BEAT_SECONDS / _HEARTBEAT_TICKS_PER_INTERVAL
START = datetime(2026, 1, 1, tzinfo=UTC)


class _Sleeper(NamedTuple):
    deadline: float
    order: int
    wake: asyncio.Future[None]
    task: asyncio.Task[Any] | None


class FakeClock(LoopClock):
    """Time that moves only when the test says.

    Each sleeper wakes at its own deadline, in order, and the task it belongs to runs until it
    sleeps again or ends before time moves on, so a run takes the same steps every time.
    """

    def __init__(self, start: float = 1024.0) -> None:
        self.time = start
        self._sleepers: list[_Sleeper] = []
        self._order = itertools.count()

    def now(self) -> float:
        """The fake time."""
        return self.time

    async def sleep(self, seconds: float) -> None:
        """Wait until the test advances the clock past now + `seconds`."""
        wake = asyncio.get_running_loop().create_future()
        sleeper = _Sleeper(self.time + seconds, next(self._order), wake, asyncio.current_task())
        heapq.heappush(self._sleepers, sleeper)
        await wake

    @property
    def sleeping(self) -> int:
        """How many tasks wait on this clock (a cancelled wait does not count)."""
        return sum(not sleeper.wake.done() for sleeper in self._sleepers)

    async def advance(self, by: timedelta) -> None:
        """Move time on by `by`, waking every sleeper due on the way at its own deadline."""
        end = self.time + by.total_seconds()
        while await self._wake_next(until=end):
            pass
        self.time = end

    async def next(self) -> None:
        """Wake the earliest sleeper, at its deadline or now if that has passed."""
        assert await self._wake_next(until=float("inf")), "nothing sleeps on the clock"

    def stall(self, by: timedelta) -> None:
        """Move time on without waking anyone, as when the loop was busy elsewhere."""
        self.time += by.total_seconds()

    async def _wake_next(self, *, until: float) -> bool:
        # Tasks created or woken before this call get to run up to their next await first.
        await asyncio.sleep(0)
        while self._sleepers and self._sleepers[0].wake.done():
            heapq.heappop(self._sleepers)  # its task was cancelled
        if not self._sleepers or self._sleepers[0].deadline > until:
            return False
        sleeper = heapq.heappop(self._sleepers)
        self.time = max(self.time, sleeper.deadline)
        sleeper.wake.set_result(None)
        await self._until_blocked(sleeper.task)
        return True

    async def _until_blocked(self, task: asyncio.Task[Any] | None) -> None:
        """Let the woken task, and whatever it wakes, run until it sleeps again or ends."""
        for _ in range(1_000):
            await asyncio.sleep(0)
            if task is None or task.done():
                return
            if any(s.task is task and not s.wake.done() for s in self._sleepers):
                return
        raise AssertionError("a woken task neither slept again nor ended")


def _hub(clock: FakeClock | None = None) -> JobEventHub:
    """A hub that is never started: tests feed it notifications as asyncpg would.

    Its heartbeats follow a fake clock, so they come only when a test advances it.
    """
    return JobEventHub("postgresql+asyncpg://nobody@localhost/none", clock=clock or FakeClock())


async def _next_beat(clock: FakeClock, inbox: Inbox, *, within: timedelta) -> float:
    """Wake the clock tick by tick until the inbox gets a heartbeat; when it was queued."""
    deadline = clock.now() + within.total_seconds()
    while inbox.empty():
        assert clock.now() < deadline, f"no heartbeat within {within}"
        await clock.next()
    assert inbox.get_nowait() is HEARTBEAT
    return inbox.quiet_since  # queueing it started the quiet interval again


TENANT = "acme"


def _payload(job_id: uuid.UUID, sequence: int, status: JobStatus, *, tenant: str = TENANT) -> str:
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
        "tenant": tenant,
        "actor": "worker",
        "position": sequence,
        "operation": "square_sum",
        "job_created_at": START.isoformat(),
    }
    return json.dumps(row, separators=(",", ":"))


def _notify(hub: JobEventHub, payload: str) -> None:
    hub._on_notification(None, 0, "job_events", payload)


class _Store:
    """Just what follow_job reads: the job now, and events after a sequence."""

    def __init__(self, job: Job, events: list[JobEvent] | None = None) -> None:
        self.job = job
        self.events = events or []

    async def get(self, job_id: uuid.UUID, *, tenant: str | None) -> Job:
        assert tenant == TENANT
        return self.job

    async def events_after(
        self, job_id: uuid.UUID, sequence: int, *, tenant: str
    ) -> list[JobEvent]:
        assert tenant == TENANT
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
        tenant=TENANT,
        actor="worker",
        position=sequence,
        operation=Operation.SQUARE_SUM,
        job_created_at=START,
    )


def _follow(hub: JobEventHub, store: _Store, job_id: uuid.UUID) -> AsyncGenerator[WatchUpdate]:
    return follow_job(hub, cast(JobStore, store), job_id, tenant=TENANT, heartbeat=BEAT)


async def test_a_quiet_inbox_beats_first_within_the_interval_then_once_per_interval() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as inbox:
        opened = clock.now()
        beats = [await _next_beat(clock, inbox, within=BEAT) for _ in range(4)]
    await hub.stop()

    assert opened < beats[0] <= opened + BEAT_SECONDS
    assert [later - earlier for earlier, later in itertools.pairwise(beats)] == [BEAT_SECONDS] * 3


async def test_streams_opened_together_beat_at_random_points_of_their_first_interval() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with contextlib.ExitStack() as subscriptions:
        opened = clock.now()
        inboxes = [
            subscriptions.enter_context(hub.subscribe(uuid.uuid4(), heartbeat=BEAT))
            for _ in range(200)
        ]
        await clock.advance(BEAT)
        items = [inbox.get_nowait() for inbox in inboxes]
        firsts = [inbox.quiet_since - opened for inbox in inboxes]  # when each was queued
        left = sum(inbox.qsize() for inbox in inboxes)
    await hub.stop()

    assert items == [HEARTBEAT] * len(inboxes)
    assert left == 0
    assert all(0 < first <= BEAT_SECONDS for first in firsts)
    # Spread over the interval (200 uniform draws all within half of it: never).
    assert max(firsts) - min(firsts) > BEAT_SECONDS / 2


async def test_every_change_restarts_the_quiet_interval() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    job_id = uuid.uuid4()
    with hub.subscribe(job_id, heartbeat=BEAT) as inbox:
        await _next_beat(clock, inbox, within=BEAT)  # the first comes sooner
        got = []
        for sequence in (2, 3, 4, 5):
            await clock.advance(BEAT * 0.625)
            _notify(hub, _payload(job_id, sequence, JobStatus.IN_PROGRESS))
            got.append(inbox.get_nowait())  # a reader that keeps up: the inbox is empty again
        last_change = clock.now()
        beat = await _next_beat(clock, inbox, within=2 * BEAT)
    await hub.stop()

    # Each change came within the interval of the one before, so no heartbeat in between.
    assert [getattr(item, "sequence", item) for item in got] == [2, 3, 4, 5]
    # The heartbeat comes once the inbox was quiet for the interval, at most a tick late.
    assert last_change + BEAT_SECONDS <= beat < last_change + BEAT_SECONDS + TICK_SECONDS


async def test_events_a_reader_has_not_read_get_no_heartbeat_behind_them() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    job_id = uuid.uuid4()
    with hub.subscribe(job_id, heartbeat=BEAT) as inbox:
        _notify(hub, _payload(job_id, 2, JobStatus.IN_PROGRESS))
        await clock.advance(3 * BEAT)
        items = [inbox.get_nowait() for _ in range(inbox.qsize())]
    await hub.stop()

    assert [getattr(item, "sequence", item) for item in items] == [2]


async def test_a_reader_that_falls_behind_gets_one_heartbeat_not_a_pile() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as inbox:
        await clock.advance(BEAT * 3.5)
        queued = inbox.qsize()
        assert inbox.get_nowait() is HEARTBEAT
        caught_up = clock.now()
        beat = await _next_beat(clock, inbox, within=BEAT)  # and beats go on once it reads
    await hub.stop()

    assert queued == 1
    assert caught_up < beat <= caught_up + BEAT_SECONDS


async def test_a_stalled_loop_catches_up_with_one_heartbeat_per_quiet_inbox() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with contextlib.ExitStack() as subscriptions:
        inboxes = [
            subscriptions.enter_context(hub.subscribe(uuid.uuid4(), heartbeat=BEAT))
            for _ in range(50)
        ]
        await clock.advance(timedelta())  # the timer starts and sleeps for its first tick
        clock.stall(3.5 * BEAT)
        await clock.next()  # the timer wakes, late
        queued = [inbox.qsize() for inbox in inboxes]
        items = [inbox.get_nowait() for inbox in inboxes]
    await hub.stop()

    assert queued == [1] * len(inboxes)
    assert items == [HEARTBEAT] * len(inboxes)


async def test_a_crowded_tick_lets_woken_readers_run_between_steps() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    crowd = 2 * _HEARTBEATS_PER_STEP + _HEARTBEATS_PER_STEP // 2
    seen: list[int] = []

    async def read(inbox: Inbox) -> None:
        """A stream's reader: on waking, note how many of the crowd have their beat."""
        assert await inbox.get() is HEARTBEAT
        seen.append(sum(other.quiet_since == clock.now() for other in inboxes))

    with contextlib.ExitStack() as subscriptions:
        inboxes = [
            subscriptions.enter_context(hub.subscribe(uuid.uuid4(), heartbeat=BEAT))
            for _ in range(crowd)
        ]
        # A stall makes every stream due at once; from then on they all share one tick.
        await clock.advance(timedelta())
        clock.stall(BEAT)
        await clock.next()
        assert [inbox.get_nowait() for inbox in inboxes] == [HEARTBEAT] * crowd
        readers = [asyncio.create_task(read(inbox)) for inbox in inboxes]
        await clock.advance(BEAT)
        await asyncio.gather(*readers)
    await hub.stop()

    # The readers woken by each step ran before the next step's heartbeats were queued.
    last = crowd - 2 * _HEARTBEATS_PER_STEP
    assert seen == (
        [_HEARTBEATS_PER_STEP] * _HEARTBEATS_PER_STEP
        + [2 * _HEARTBEATS_PER_STEP] * _HEARTBEATS_PER_STEP
        + [crowd] * last
    )


async def test_a_closed_inbox_gets_no_heartbeats() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as closed:
        pass
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as still_open:
        await clock.advance(3 * BEAT)
        queued = (closed.qsize(), still_open.qsize())
    await hub.stop()

    assert queued == (0, 1)


async def test_the_timer_sleeps_only_while_streams_want_heartbeats() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as inbox:
        await _next_beat(clock, inbox, within=BEAT)
        timing_while_open = clock.sleeping
    await clock.advance(2 * BEAT)
    timing_after_close = clock.sleeping
    with hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as inbox:
        reopened = clock.now()
        beat = await _next_beat(clock, inbox, within=BEAT)  # a new stream starts it again
    await hub.stop()
    timing_after_stop = clock.sleeping

    assert (timing_while_open, timing_after_close, timing_after_stop) == (1, 0, 0)
    assert reopened < beat <= reopened + BEAT_SECONDS


async def test_an_inbox_without_heartbeat_gets_none() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with (
        hub.subscribe(uuid.uuid4()) as without,
        hub.subscribe(uuid.uuid4(), heartbeat=BEAT) as beating,
    ):
        await clock.advance(3 * BEAT)
        queued = (without.qsize(), beating.qsize())
    await hub.stop()

    assert queued == (0, 1)


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


async def test_a_stream_of_one_tenant_never_receives_another_tenants_event() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    with (
        hub.subscribe(job_id, tenant=TENANT) as owners,
        hub.subscribe(job_id, tenant="intruder") as others,
        hub.subscribe(job_id) as service,
    ):
        _notify(hub, _payload(job_id, 2, JobStatus.IN_PROGRESS))
        received = (owners.qsize(), others.qsize(), service.qsize())
    await hub.stop()

    # The service's own subscribers (workers) hear every tenant.
    assert received == (1, 0, 1)


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
    clock = FakeClock()
    hub = _hub(clock)
    job_id = uuid.uuid4()
    store = _Store(_job(job_id))
    updates = _follow(hub, store, job_id)
    snapshot = await anext(updates)
    await clock.advance(BEAT)
    beat = await asyncio.wait_for(anext(updates), 5)  # already queued; the timeout only guards
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


async def test_follow_job_resumes_after_a_sequence_with_the_history_after_it() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    store = _Store(
        _job(job_id),
        [_event(job_id, 2, JobStatus.IN_PROGRESS), _event(job_id, 3, JobStatus.SUCCESS)],
    )

    async def resumed() -> list[int]:
        updates = follow_job(
            hub, cast(JobStore, store), job_id, tenant=TENANT, after_sequence=1, heartbeat=BEAT
        )
        return [update.job.sequence async for update in updates]

    sequences = await asyncio.wait_for(resumed(), 5)  # the timeout only guards
    await hub.stop()

    assert sequences == [2, 3]


async def test_follow_job_rereads_what_it_may_have_missed_after_a_reconnect() -> None:
    hub = _hub()
    job_id = uuid.uuid4()
    store = _Store(
        _job(job_id),
        [_event(job_id, 2, JobStatus.IN_PROGRESS), _event(job_id, 3, JobStatus.SUCCESS)],
    )
    updates = _follow(hub, store, job_id)
    await anext(updates)
    hub._broadcast(RESYNC)  # the listener reconnected: notifications may have been lost
    rest = await asyncio.wait_for(_sequences(updates), 5)  # the timeout only guards
    await hub.stop()

    assert rest == [2, 3]


async def _sequences(updates: AsyncGenerator[WatchUpdate]) -> list[int]:
    return [update.job.sequence async for update in updates]
