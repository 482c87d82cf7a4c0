"""WatchJob and WatchJobs: changes as they commit, from the process's event hub, in order, each
once.

Each stream subscribes before it reads where it starts, so a change committed in between is
never missed; numbers in commit order (a job's sequence for WatchJob, its tenant's position for
WatchJobs) drop what it has already covered, and a gap in them (or a listener reconnect) is
filled from the database. Heartbeats come from the hub's one clock, not a timer per stream: a
timer per read is garbage per message, which many long-lived streams cannot afford
(BENCHMARKS.md, item 5).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

from jobcore.errors import FieldViolation, InvalidJobError, ServiceShuttingDownError
from jobcore.events import HEARTBEAT, SHUTDOWN, InboxItem, JobEventHub
from jobcore.listing import JobSelection, WatchCursor
from jobcore.models import Job, JobEvent
from jobcore.store import JobStore

# Events WatchJobs reads from the database per statement while it catches up.
REPLAY_PAGE_SIZE = 1000


class WatchUpdate(NamedTuple):
    """One message of a watch: the job's state, whether it is a heartbeat, the change's trace."""

    job: Job
    heartbeat: bool = False
    traceparent: str | None = None


class TenantUpdate(NamedTuple):
    """One message of WatchJobs: a selected job's state after a change (None on a heartbeat),
    the position of the tenant's history the stream has covered with it, the change's trace."""

    job: Job | None
    position: int
    traceparent: str | None = None


class _Step(enum.Enum):
    """What a stream does with the next item of its inbox."""

    HEARTBEAT = "heartbeat"  # send a heartbeat
    SKIP = "skip"  # an event it already covered
    SEND = "send"  # the event right after the last one it covered: send it as it is
    CATCH_UP = "catch up"  # a gap, or a listener reconnect: read what it missed from the database


def _step(item: InboxItem, *, covered: int, number: Callable[[JobEvent], int]) -> _Step:
    """The rule both watches keep for an inbox item, given the number (in commit order) of the
    last event the stream covered; ServiceShuttingDownError when the server drains.

    A plain function, not a generator both loops share: it adds nothing to what each of
    many thousand open streams holds.
    """
    if item is HEARTBEAT:
        return _Step.HEARTBEAT
    if item is SHUTDOWN:
        raise ServiceShuttingDownError("the server is shutting down; watch again to resume")
    if not isinstance(item, JobEvent):  # RESYNC: notifications may have been missed
        return _Step.CATCH_UP
    if number(item) <= covered:
        return _Step.SKIP
    return _Step.SEND if number(item) == covered + 1 else _Step.CATCH_UP


async def follow_job(
    hub: JobEventHub,
    store: JobStore,
    job_id: uuid.UUID,
    *,
    tenant: str,
    after_sequence: int = 0,
    heartbeat: timedelta,
) -> AsyncGenerator[WatchUpdate, None]:
    """Each state of the job in order, ending after the final one.

    With after_sequence=0 the first state is the current one; otherwise only the
    states after that sequence are sent, history first, so a client that lost
    its stream resumes with nothing missed and nothing repeated. While nothing
    changes for `heartbeat`, the latest state is repeated as a heartbeat. Another tenant's
    job is not found, as one that never existed.
    """
    with hub.watch_job(job_id, tenant=tenant, heartbeat=heartbeat) as inbox:
        latest = await store.get(job_id, tenant=tenant)
        if after_sequence <= 0:
            sent = latest.sequence
            yield WatchUpdate(latest)
        else:
            sent = after_sequence
            for event in await store.events_after(job_id, sent, tenant=tenant):
                latest, sent = event.apply_to(latest), event.sequence
                yield WatchUpdate(latest, traceparent=event.traceparent)
        while not latest.status.is_final:
            item = await inbox.get()
            step = _step(item, covered=sent, number=_sequence)
            if step is _Step.HEARTBEAT:
                yield WatchUpdate(latest, heartbeat=True)
                continue
            if step is _Step.SKIP:
                continue
            events = (
                [cast(JobEvent, item)]
                if step is _Step.SEND
                else await store.events_after(job_id, sent, tenant=tenant)
            )
            for event in events:
                latest, sent = event.apply_to(latest), event.sequence
                yield WatchUpdate(latest, traceparent=event.traceparent)


def _sequence(event: JobEvent) -> int:
    return event.sequence


def _position(event: JobEvent) -> int:
    return event.position or 0


async def follow_tenant(
    hub: JobEventHub,
    store: JobStore,
    *,
    tenant: str,
    selection: JobSelection,
    after: WatchCursor | None,
    heartbeat: timedelta,
    retention: timedelta,
    page_size: int = REPLAY_PAGE_SIZE,
) -> AsyncGenerator[TenantUpdate, None]:
    """Every change of the tenant's selected jobs, in commit order, each once; never ends.

    Without `after` the stream starts with a heartbeat at the tenant's latest position and
    sends the changes after it; with `after`, the changes after the cursor's position, history
    first. Every change moves the position, selected or not, and heartbeats carry it, so a
    client that resumes from its last message's position misses nothing and gets nothing twice.

    The database may lack changes between two positions: retention deletes finished jobs with
    their events. Those are skipped, never waited for; a cursor from before the retention
    (with changes after it) is refused, since some of them may be gone.

    A busy tenant's inbox is never quiet, so the hub's heartbeats stop; while none of its
    changes is selected, the stream sends a heartbeat of its own once per `heartbeat`.
    """
    now = hub.clock.now
    beat_seconds = heartbeat.total_seconds()
    last = 0  # the position covered
    sent_at = now()  # when the last message went out

    async def replay(up_to: int) -> AsyncIterator[JobEvent]:
        """The tenant's events after `last` from the database, at least up to `up_to` (those
        that are still there), a page per statement."""
        while last < up_to:
            page = await store.tenant_events_after(tenant, last, limit=page_size)
            for event in page:
                yield event
            if len(page) < page_size:
                return

    async def catch_up(shown_by: JobEvent | None) -> AsyncIterator[JobEvent]:
        """What the stream may have missed: up to the event that showed a gap (then that event,
        if the database no longer has it), or, after a reconnect, up to the latest position."""
        up_to = _position(shown_by) if shown_by else await store.last_event_position(tenant)
        async for event in replay(up_to):
            yield event
        if shown_by is not None and _position(shown_by) > last:
            yield shown_by

    def cover(event: JobEvent) -> TenantUpdate | None:
        """Move the stream past the event; the message to send for it, if any."""
        nonlocal last, sent_at
        if event.tenant != tenant or _position(event) <= last:
            return None  # never another tenant's; nothing twice
        last = _position(event)
        job = event.job()
        if selection.selects(job):
            sent_at = now()
            return TenantUpdate(job, last, event.traceparent)
        if now() - sent_at >= beat_seconds:
            sent_at = now()
            return TenantUpdate(None, last)
        return None

    with hub.subscribe_tenant(tenant, heartbeat=heartbeat) as inbox:
        newest = await store.last_event_position(tenant)
        if after is None:
            last = newest
            yield TenantUpdate(None, last)
        else:
            _check_resumable(after, newest=newest, retention=retention)
            last = after.position
            async for event in replay(newest):
                if (update := cover(event)) is not None:
                    yield update
        while True:
            item = await inbox.get()
            step = _step(item, covered=last, number=_position)
            if step is _Step.HEARTBEAT:
                sent_at = now()
                yield TenantUpdate(None, last)
            elif step is _Step.SEND:
                if (update := cover(cast(JobEvent, item))) is not None:
                    yield update
            elif step is _Step.CATCH_UP:
                async for event in catch_up(item if isinstance(item, JobEvent) else None):
                    if (update := cover(event)) is not None:
                        yield update


def _check_resumable(after: WatchCursor, *, newest: int, retention: timedelta) -> None:
    """InvalidJobError naming the cursor's field if resuming from it could miss changes."""
    if after.position > newest:
        raise InvalidJobError(
            [
                FieldViolation(
                    after.field,
                    "is ahead of this tenant's history (was the database restored?); "
                    "watch again without it",
                )
            ]
        )
    if after.position < newest and after.issued_at < datetime.now(UTC) - retention:
        raise InvalidJobError(
            [
                FieldViolation(
                    after.field,
                    f"is older than the retention ({retention.total_seconds() / 86400:g} "
                    "days): changes after it "
                    "may have been deleted; watch again without it",
                )
            ]
        )
