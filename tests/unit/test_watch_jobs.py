"""WatchJobs without a database: the hub's tenant subscriptions, and follow_tenant over a fake
store (positions in commit order, gaps, reconnects, retention's holes, cursors, selection)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncGenerator
from datetime import UTC, datetime, timedelta
from typing import cast

import pytest

from jobcore import events
from jobcore.errors import InvalidJobError, ServiceShuttingDownError
from jobcore.events import HEARTBEAT, RESYNC, SHUTDOWN, TENANT_INBOX_CAPACITY, JobEventHub
from jobcore.listing import JobSelection, WatchCursor, parse_filter
from jobcore.models import JobEvent, JobStatus, Outcome
from jobcore.operations import Operation
from jobcore.store import JobStore
from server.watch import TenantUpdate, follow_tenant
from tests.unit.test_watch_heartbeats import BEAT, FakeClock

TENANT = "acme"
START = datetime(2026, 1, 1, tzinfo=UTC)
RETENTION = timedelta(days=30)
EVERYTHING = JobSelection([])
# How long a test waits for what is already due; it only guards against a hang.
GUARD_SECONDS = 5


def _hub(clock: FakeClock | None = None) -> JobEventHub:
    """A hub that is never started: tests feed it notifications as asyncpg would."""
    return JobEventHub("postgresql+asyncpg://nobody@localhost/none", clock=clock or FakeClock())


def _event(
    job_id: uuid.UUID,
    sequence: int,
    position: int,
    status: JobStatus = JobStatus.IN_PROGRESS,
    *,
    tenant: str = TENANT,
    operation: Operation = Operation.SQUARE_SUM,
) -> JobEvent:
    return JobEvent(
        job_id=job_id,
        sequence=sequence,
        status=status,
        occurred_at=START + timedelta(seconds=position),
        outcome=Outcome(result=4.0) if status.is_final else None,
        attempts=1 if sequence > 1 else 0,
        tenant=tenant,
        actor="worker",
        position=position,
        operation=operation,
        job_created_at=START,
    )


def _payload(event: JobEvent) -> str:
    """The notification the job_events trigger sends for `event` (row_to_json, table order)."""
    row = {
        "job_id": str(event.job_id),
        "sequence": event.sequence,
        "status": event.status.value,
        "occurred_at": event.occurred_at.isoformat(),
        "attempt": event.attempts,
        "traceparent": None,
        "result": event.outcome.result if event.outcome else None,
        "error": None,
        "tenant": event.tenant,
        "actor": event.actor,
        "position": event.position,
        "operation": event.operation.value if event.operation else None,
        "job_created_at": START.isoformat(),
    }
    return json.dumps(row, separators=(",", ":"))


def _notify(hub: JobEventHub, event: JobEvent | str) -> None:
    hub._on_notification(
        None, 0, "job_events", event if isinstance(event, str) else _payload(event)
    )


class _Store:
    """What follow_tenant reads: a tenant's events by position, and its latest position.

    `committed` is the counter (tenant_usage.last_event_position); `events` what the table
    still holds (retention may have deleted some). `reads` counts event statements.
    """

    def __init__(self, events: list[JobEvent] | None = None, *, committed: int = 0) -> None:
        self.events = sorted(events or [], key=lambda event: event.position or 0)
        self.committed = max([committed, *(event.position or 0 for event in self.events)])
        self.reads = 0

    def commit(self, event: JobEvent) -> JobEvent:
        self.events.append(event)
        self.committed = max(self.committed, event.position or 0)
        return event

    async def tenant_events_after(
        self, tenant: str, position: int, *, limit: int
    ) -> list[JobEvent]:
        assert tenant == TENANT
        self.reads += 1
        after = [event for event in self.events if (event.position or 0) > position]
        return after[:limit]

    async def last_event_position(self, tenant: str) -> int:
        assert tenant == TENANT
        return self.committed


def _follow(
    hub: JobEventHub,
    store: _Store,
    *,
    after: WatchCursor | None = None,
    selection: JobSelection = EVERYTHING,
    page_size: int = 3,
) -> AsyncGenerator[TenantUpdate]:
    return follow_tenant(
        hub,
        cast(JobStore, store),
        tenant=TENANT,
        selection=selection,
        after=after,
        heartbeat=BEAT,
        retention=RETENTION,
        page_size=page_size,
    )


async def _take(updates: AsyncGenerator[TenantUpdate], count: int) -> list[TenantUpdate]:
    """The next `count` messages (all of them already due)."""
    return [await asyncio.wait_for(anext(updates), GUARD_SECONDS) for _ in range(count)]


def _shown(updates: list[TenantUpdate]) -> list[tuple[int, int | None, int]]:
    """(position, job sequence or None for a heartbeat, job id's int) of each message."""
    return [
        (u.position, u.job.sequence if u.job else None, u.job.id.int if u.job else 0)
        for u in updates
    ]


def _cursor(position: int, *, issued_at: datetime | None = None) -> WatchCursor:
    return WatchCursor(position, issued_at or datetime.now(UTC))


A, B, C = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)


# --- the hub's tenant subscriptions --------------------------------------------------------


async def test_a_tenant_inbox_gets_every_event_of_its_tenant_and_none_of_another() -> None:
    hub = _hub()
    mine, theirs = _event(A, 1, 1), _event(B, 1, 1, tenant="globex")
    with hub.subscribe_tenant(TENANT) as inbox, hub.subscribe(A, tenant=TENANT) as job_inbox:
        _notify(hub, mine)
        _notify(hub, theirs)
        _notify(hub, _event(C, 1, 2))
        received = [inbox.get_nowait() for _ in range(inbox.qsize())]
        for_the_job = [job_inbox.get_nowait() for _ in range(job_inbox.qsize())]
        count = hub.watcher_count
    await hub.stop()

    assert received == [mine, _event(C, 1, 2)]
    assert for_the_job == [mine]
    assert count == 2
    assert hub.watcher_count == 0


async def test_a_notification_is_parsed_once_however_many_streams_receive_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[str] = []
    parse = events._parse_notification

    def counting(payload: str) -> JobEvent:
        parsed.append(payload)
        return parse(payload)

    monkeypatch.setattr(events, "_parse_notification", counting)
    hub = _hub()
    with (
        hub.subscribe_tenant(TENANT) as first,
        hub.subscribe_tenant(TENANT) as second,
        hub.subscribe(A) as third,
    ):
        _notify(hub, _event(A, 1, 1))
        queued = (first.qsize(), second.qsize(), third.qsize())
    await hub.stop()

    assert queued == (1, 1, 1)
    assert len(parsed) == 1


async def test_with_tenant_streams_another_tenants_unwatched_job_is_still_not_parsed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = _hub()
    broken = '{"job_id":"%s","sequence":1,"tenant":"%s","position":"x"'  # truncated JSON
    with caplog.at_level(logging.ERROR), hub.subscribe_tenant(TENANT) as inbox:
        _notify(hub, broken % (uuid.uuid4(), "globex"))
        quiet_for_others = not caplog.records
        _notify(hub, broken % (uuid.uuid4(), TENANT))
        queued = inbox.qsize()
    await hub.stop()

    assert quiet_for_others
    assert "malformed" in caplog.text
    assert queued == 0


async def test_a_tenant_name_with_an_escaped_character_is_parsed_to_be_read() -> None:
    hub = _hub()
    tenant = 'quote"d'
    event = _event(A, 1, 1, tenant=tenant)
    with hub.subscribe_tenant(tenant) as inbox:
        _notify(hub, event)
        item = inbox.get_nowait()
    await hub.stop()

    assert item == event


async def test_a_full_tenant_inbox_drops_events_for_one_resync_until_it_is_read() -> None:
    hub = _hub()
    with hub.subscribe_tenant(TENANT) as inbox:
        for position in range(1, TENANT_INBOX_CAPACITY + 4):
            _notify(hub, _event(A, position, position))
        held = inbox.qsize()
        first_items = [inbox.get_nowait() for _ in range(TENANT_INBOX_CAPACITY)]
        _notify(hub, _event(A, 0, TENANT_INBOX_CAPACITY + 4))  # still dropped: RESYNC unread
        resync = inbox.get_nowait()
        _notify(hub, _event(A, 0, TENANT_INBOX_CAPACITY + 5))  # queued again
        after = [inbox.get_nowait() for _ in range(inbox.qsize())]
    await hub.stop()

    assert held == TENANT_INBOX_CAPACITY + 1
    assert [getattr(item, "position", None) for item in first_items] == list(
        range(1, TENANT_INBOX_CAPACITY + 1)
    )
    assert resync is RESYNC
    assert [getattr(item, "position", None) for item in after] == [TENANT_INBOX_CAPACITY + 5]


async def test_tenant_inboxes_get_heartbeats_resync_and_shutdown() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    with hub.subscribe_tenant(TENANT, heartbeat=BEAT) as inbox:
        await clock.advance(BEAT)
        beat = inbox.get_nowait()
        hub._broadcast(RESYNC)
        resync = inbox.get_nowait()
        await hub.stop()
        shutdown = inbox.get_nowait()

    assert (beat, resync, shutdown) == (HEARTBEAT, RESYNC, SHUTDOWN)
    with pytest.raises(ServiceShuttingDownError), hub.subscribe_tenant(TENANT):
        pass


# --- follow_tenant ---------------------------------------------------------------------------


async def test_a_new_stream_starts_with_a_heartbeat_at_the_latest_position_then_each_change_once() -> (
    None
):
    hub = _hub()
    store = _Store([_event(A, 1, 1), _event(A, 2, 2)])
    updates = _follow(hub, store)
    [start] = await _take(updates, 1)
    for event in (_event(B, 1, 3), _event(B, 1, 3), _event(A, 3, 4, JobStatus.SUCCESS)):
        _notify(hub, store.commit(event) if event not in store.events else event)
    _notify(hub, _event(A, 2, 2))  # from before the stream: covered by its start
    _notify(hub, store.commit(_event(C, 1, 5)))
    rest = await _take(updates, 3)
    await updates.aclose()
    await hub.stop()

    assert (start.job, start.position) == (None, 2)
    assert _shown(rest) == [(3, 1, B.int), (4, 3, A.int), (5, 1, C.int)]
    assert rest[1].job is not None
    assert rest[1].job.outcome == Outcome(result=4.0)
    assert store.reads == 0  # nothing was missed, so nothing was read back
    assert hub.watcher_count == 0


async def test_a_gap_is_filled_from_the_database_in_pages() -> None:
    hub = _hub()
    store = _Store()
    updates = _follow(hub, store, page_size=2)
    await _take(updates, 1)
    missed = [store.commit(_event(A, n, n)) for n in range(1, 6)]
    _notify(hub, missed[-1])  # 1 to 4 were not heard
    _notify(hub, store.commit(_event(A, 6, 6)))
    rest = await _take(updates, 6)
    await updates.aclose()
    await hub.stop()

    assert [u.position for u in rest] == [1, 2, 3, 4, 5, 6]
    assert store.reads == 3  # pages of 2: [1, 2], [3, 4], [5]


async def test_holes_left_by_retention_are_skipped_not_waited_for() -> None:
    hub = _hub()
    store = _Store()
    updates = _follow(hub, store)
    await _take(updates, 1)
    store.commit(_event(A, 1, 1))
    store.committed = 4  # positions 2 and 3: jobs already deleted by retention
    _notify(hub, store.commit(_event(B, 1, 4)))
    _notify(hub, store.commit(_event(B, 2, 5)))
    rest = await _take(updates, 3)
    await updates.aclose()
    await hub.stop()

    assert [u.position for u in rest] == [1, 4, 5]
    assert store.reads == 1


async def test_a_live_event_the_database_no_longer_has_is_still_sent_after_the_replay() -> None:
    hub = _hub()
    store = _Store()
    updates = _follow(hub, store)
    await _take(updates, 1)
    store.commit(_event(A, 1, 1))
    gone = _event(B, 3, 3, JobStatus.SUCCESS)  # its job was purged before the replay read it
    store.committed = 3
    _notify(hub, gone)
    rest = await _take(updates, 2)
    await updates.aclose()
    await hub.stop()

    assert [u.position for u in rest] == [1, 3]


async def test_after_a_listener_reconnect_the_stream_rereads_up_to_the_latest_position() -> None:
    hub = _hub()
    store = _Store()
    updates = _follow(hub, store)
    await _take(updates, 1)
    for n in (1, 2, 3):
        store.commit(_event(A, n, n))  # committed while the listener was away
    hub._broadcast(RESYNC)
    _notify(hub, store.events[1])  # a late notification of what the replay sent: dropped
    _notify(hub, store.commit(_event(A, 4, 4)))
    rest = await _take(updates, 4)
    await updates.aclose()
    await hub.stop()

    assert [u.position for u in rest] == [1, 2, 3, 4]


async def test_a_reader_that_fell_behind_a_full_inbox_misses_nothing() -> None:
    hub = _hub()
    store = _Store()
    updates = _follow(hub, store, page_size=500)
    await _take(updates, 1)
    total = TENANT_INBOX_CAPACITY + 50
    for n in range(1, total + 1):
        _notify(hub, store.commit(_event(A, n, n)))
    rest = await _take(updates, total)
    await updates.aclose()
    await hub.stop()

    assert [u.position for u in rest] == list(range(1, total + 1))


async def test_a_resumed_stream_sends_the_history_after_its_cursor_then_live_changes() -> None:
    hub = _hub()
    store = _Store([_event(A, n, n) for n in range(1, 8)])
    updates = _follow(hub, store, after=_cursor(3))
    history = await _take(updates, 4)
    _notify(hub, store.events[-1])  # already sent from history
    _notify(hub, store.commit(_event(B, 1, 8)))
    [live] = await _take(updates, 1)
    await updates.aclose()
    await hub.stop()

    assert [u.position for u in history] == [4, 5, 6, 7]
    assert all(u.job is not None for u in history)
    assert (live.position, live.job and live.job.id) == (8, B)


async def test_only_selected_changes_are_sent_and_every_change_moves_the_cursor() -> None:
    hub = _hub()
    store = _Store()
    selection = JobSelection(parse_filter('operation = "cube_sum"'), frozenset({A, B}))
    updates = _follow(hub, store, selection=selection)
    await _take(updates, 1)
    for event in (
        _event(A, 1, 1),  # square_sum
        _event(A, 1, 2, operation=Operation.CUBE_SUM),
        _event(C, 1, 3, operation=Operation.CUBE_SUM),  # not one of the ids
        _event(B, 1, 4, operation=Operation.CUBE_SUM),
    ):
        _notify(hub, store.commit(event))
    sent = await _take(updates, 2)
    _notify(hub, store.commit(_event(C, 2, 5)))
    hub._broadcast(HEARTBEAT)
    [beat] = await _take(updates, 1)
    await updates.aclose()
    await hub.stop()

    assert _shown(sent) == [(2, 1, A.int), (4, 1, B.int)]
    assert (beat.job, beat.position) == (None, 5)


async def test_a_busy_tenant_still_gets_heartbeats_while_nothing_is_selected() -> None:
    clock = FakeClock()
    hub = _hub(clock)
    store = _Store()
    updates = _follow(hub, store, selection=JobSelection([], frozenset({C})))
    await _take(updates, 1)
    beats: list[TenantUpdate] = []
    next_update = asyncio.ensure_future(anext(updates))
    for n in range(1, 41):
        clock.stall(BEAT / 8)  # a change every eighth of the interval: the inbox is never quiet
        _notify(hub, store.commit(_event(A, n, n)))
        await asyncio.sleep(0)
        if next_update.done():
            beats.append(next_update.result())
            next_update = asyncio.ensure_future(anext(updates))
    next_update.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await next_update
    await updates.aclose()
    await hub.stop()

    assert [u.job for u in beats] == [None] * 5
    assert [u.position for u in beats] == [8, 16, 24, 32, 40]


async def test_another_tenants_event_never_moves_or_reaches_the_stream() -> None:
    hub = _hub()
    store = _Store()
    updates = _follow(hub, store)
    await _take(updates, 1)
    inbox = next(iter(hub._tenant_inboxes[TENANT]))
    inbox.put_nowait(_event(B, 1, 1, tenant="globex"))  # as if the hub had misrouted it
    _notify(hub, store.commit(_event(A, 1, 1)))
    [update] = await _take(updates, 1)
    await updates.aclose()
    await hub.stop()

    assert update.job is not None
    assert update.job.id == A


async def test_a_cursor_ahead_of_the_history_or_from_before_the_retention_is_refused() -> None:
    hub = _hub()
    store = _Store([_event(A, n, n) for n in range(1, 4)])
    long_ago = datetime.now(UTC) - RETENTION - timedelta(hours=1)

    refused = {}
    for name, cursor in {
        "ahead": _cursor(4),
        "old": _cursor(2, issued_at=long_ago),
    }.items():
        with pytest.raises(InvalidJobError) as raised:
            await anext(_follow(hub, store, after=cursor))
        [violation] = raised.value.violations
        refused[name] = (violation.field, violation.description)
    # Old, but nothing changed since: nothing can be missing.
    quiet = _follow(hub, store, after=_cursor(3, issued_at=long_ago))
    pending = asyncio.ensure_future(anext(quiet))
    await asyncio.sleep(0)
    still_open = not pending.done()
    pending.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await pending
    await quiet.aclose()
    await hub.stop()

    assert refused["ahead"][0] == "after_cursor"
    assert "ahead of this tenant's history" in refused["ahead"][1]
    assert refused["old"][0] == "after_cursor"
    assert "older than the retention (30 days)" in refused["old"][1]
    assert still_open
    assert hub.watcher_count == 0


async def test_the_stream_ends_with_an_error_when_the_server_shuts_down() -> None:
    hub = _hub()
    updates = _follow(hub, _Store())
    await _take(updates, 1)
    next_update = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0)
    await hub.stop()

    with pytest.raises(ServiceShuttingDownError):
        await asyncio.wait_for(next_update, GUARD_SECONDS)
