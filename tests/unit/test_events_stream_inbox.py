"""StreamInbox, the inbox every open stream holds: order, waking its reader, overflow to
RESYNC, and a cancelled read that takes nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import pytest

from jobcore.events import HEARTBEAT, RESYNC, SHUTDOWN, InboxItem, LoopClock, StreamInbox
from jobcore.models import JobEvent, JobStatus
from jobcore.operations import Operation

START = datetime(2026, 1, 1, tzinfo=UTC)


def _event(sequence: int) -> JobEvent:
    return JobEvent(
        job_id=uuid.UUID(int=1),
        sequence=sequence,
        status=JobStatus.IN_PROGRESS,
        occurred_at=START,
        attempts=1,
        outcome=None,
        operation=Operation.SQUARE_SUM,
        job_created_at=START,
        tenant="acme",
        position=sequence,
    )


async def test_items_come_out_in_the_order_they_went_in() -> None:
    inbox = StreamInbox(LoopClock())
    items: list[InboxItem] = [_event(1), HEARTBEAT, _event(2), RESYNC, SHUTDOWN]
    for item in items:
        inbox.put_nowait(item)

    assert inbox.qsize() == len(items)
    assert [await inbox.get() for _ in items] == items
    assert inbox.empty()
    with pytest.raises(asyncio.QueueEmpty):
        inbox.get_nowait()


async def test_a_waiting_reader_wakes_with_the_item_put() -> None:
    inbox = StreamInbox(LoopClock())
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    assert not reader.done()

    inbox.put_nowait(HEARTBEAT)

    assert await asyncio.wait_for(reader, 5) is HEARTBEAT


async def test_a_cancelled_read_takes_nothing_and_the_next_read_gets_it() -> None:
    inbox = StreamInbox(LoopClock())
    reader = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    reader.cancel()
    inbox.put_nowait(_event(1))  # arrives as the read is cancelled
    with pytest.raises(asyncio.CancelledError):
        await reader

    assert inbox.qsize() == 1
    assert await inbox.get() == _event(1)


async def test_putting_an_item_starts_the_quiet_interval_again() -> None:
    inbox = StreamInbox(LoopClock())
    inbox.quiet_since -= 100

    inbox.put_nowait(_event(1))

    assert inbox.quiet_since > LoopClock.now() - 50


async def test_a_full_inbox_takes_resync_instead_of_events_until_it_is_read() -> None:
    inbox = StreamInbox(LoopClock(), capacity=3)
    for sequence in range(1, 7):
        inbox.put_nowait(_event(sequence))

    held = [inbox.get_nowait() for _ in range(inbox.qsize())]
    inbox.put_nowait(_event(7))  # RESYNC was read: events are queued again
    after = inbox.get_nowait()

    assert held == [_event(1), _event(2), _event(3), RESYNC]
    assert after == _event(7)


async def test_signals_are_queued_even_when_the_inbox_is_full() -> None:
    inbox = StreamInbox(LoopClock(), capacity=1)
    inbox.put_nowait(_event(1))
    inbox.put_nowait(SHUTDOWN)

    assert [inbox.get_nowait() for _ in range(inbox.qsize())] == [_event(1), SHUTDOWN]
