"""worker.slots: a freed slot goes to the most urgent waiter, in arrival order within a priority."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from worker.slots import ByteBudget, JobSlots


async def _settle() -> None:
    """Let every ready task run until it blocks again."""
    for _ in range(5):
        await asyncio.sleep(0)


def _waiter(slots: JobSlots, priority: int, served: list[str], name: str) -> asyncio.Task[None]:
    async def wait() -> None:
        await slots.acquire(priority)
        served.append(name)

    return asyncio.create_task(wait(), name=name)


async def _held_with_two_waiters() -> tuple[
    JobSlots, list[str], asyncio.Task[None], asyncio.Task[None]
]:
    """One slot, held, and two waiters of one priority queued for it: "first", then "second"."""
    slots = JobSlots(1)
    await slots.acquire(0)
    served: list[str] = []
    first = _waiter(slots, 0, served, "first")
    second = _waiter(slots, 0, served, "second")
    await _settle()
    return slots, served, first, second


def _holders(
    budget: ByteBudget, served: list[str], release: asyncio.Event
) -> Callable[[str, int], asyncio.Task[None]]:
    """`hold(name, size)`: a task holding `size` bytes of `budget` until `release` is set.

    It adds `name` to `served` once the bytes are granted.
    """

    async def hold(name: str, size: int) -> None:
        async with budget.hold(size):
            served.append(name)
            await release.wait()

    return lambda name, size: asyncio.create_task(hold(name, size), name=name)


async def test_slots_are_taken_at_once_while_free_then_callers_wait() -> None:
    slots = JobSlots(2)
    await slots.acquire(9)
    await slots.acquire(9)
    served: list[str] = []

    waiter = _waiter(slots, 0, served, "third")
    await _settle()

    assert (slots.free, slots.waiting, served) == (0, 1, [])
    slots.release()
    await waiter
    assert (slots.free, slots.waiting, served) == (0, 0, ["third"])


async def test_a_freed_slot_goes_to_the_most_urgent_waiter_and_in_arrival_order_within_one() -> (
    None
):
    slots = JobSlots(1)
    await slots.acquire(0)
    served: list[str] = []
    arrivals = [("deep-1", 9), ("mid-1", 3), ("deep-2", 9), ("top-1", 0), ("mid-2", 3)]
    for name, priority in arrivals:
        _waiter(slots, priority, served, name)
        await _settle()  # each queues before the next arrives

    for expected in ["top-1", "mid-1", "mid-2", "deep-1", "deep-2"]:
        slots.release()
        await _settle()
        assert served[-1] == expected

    assert slots.waiting == 0
    slots.release()
    assert slots.free == 1


async def test_a_released_slot_cannot_be_taken_by_a_caller_arriving_after_the_release() -> None:
    slots = JobSlots(1)
    await slots.acquire(9)
    served: list[str] = []
    waiting = _waiter(slots, 9, served, "waiting")
    await _settle()

    slots.release()
    late = _waiter(slots, 0, served, "late")  # more urgent, but the slot is already handed over
    await _settle()

    assert served == ["waiting"]
    assert waiting.done()
    assert not late.done()
    slots.release()
    await late
    assert served == ["waiting", "late"]


async def test_a_cancelled_waiter_leaves_the_queue_without_a_slot() -> None:
    slots = JobSlots(1)
    await slots.acquire(0)
    served: list[str] = []
    cancelled = _waiter(slots, 0, served, "cancelled")
    after = _waiter(slots, 3, served, "after")
    await _settle()

    cancelled.cancel()
    await _settle()

    assert slots.waiting == 1
    slots.release()
    await after
    assert served == ["after"]
    slots.release()
    assert (slots.free, slots.waiting) == (1, 0)


async def test_a_waiter_cancelled_as_its_slot_is_handed_over_passes_the_slot_on() -> None:
    slots, served, first, second = await _held_with_two_waiters()

    slots.release()  # the slot is first's, but its task has not run yet
    first.cancel()
    await _settle()

    assert first.cancelled()
    assert second.done()
    assert served == ["second"]
    slots.release()
    assert (slots.free, slots.waiting) == (1, 0)


async def test_a_waiter_cancelled_before_the_release_runs_is_skipped() -> None:
    slots, served, first, second = await _held_with_two_waiters()

    first.cancel()  # its task has not yet run to leave the queue
    slots.release()
    await _settle()

    assert first.cancelled()
    assert second.done()
    assert served == ["second"]
    assert slots.waiting == 0


def test_releasing_a_slot_nobody_holds_is_an_error() -> None:
    slots = JobSlots(1)
    with pytest.raises(ValueError, match="not held"):
        slots.release()


def test_a_worker_has_at_least_one_slot() -> None:
    with pytest.raises(ValueError, match="at least one slot"):
        JobSlots(0)


async def test_a_byte_budget_grants_in_arrival_order_and_a_request_above_it_runs_alone() -> None:
    budget = ByteBudget(100)
    served: list[str] = []
    release = asyncio.Event()
    hold = _holders(budget, served, release)

    first = hold("first", 60)
    await _settle()
    # 50 does not fit beside 60; 10 would, but waits behind the earlier caller.
    rest = [hold("big", 500), hold("small", 10)]
    await _settle()
    assert served == ["first"]
    assert budget.held == 60

    release.set()
    await asyncio.gather(first, *rest)
    assert served == ["first", "big", "small"]
    assert budget.held == 0


async def test_a_cancelled_byte_budget_waiter_lets_the_next_one_in() -> None:
    budget = ByteBudget(100)
    served: list[str] = []
    release = asyncio.Event()
    hold = _holders(budget, served, release)

    holder = hold("holder", 50)
    await _settle()
    blocked = hold("blocked", 100)
    behind = hold("behind", 50)
    await _settle()
    assert served == ["holder"]

    blocked.cancel()
    await _settle()
    assert served == ["holder", "behind"]
    release.set()
    await asyncio.gather(holder, behind)
    assert blocked.cancelled()
    assert budget.held == 0
