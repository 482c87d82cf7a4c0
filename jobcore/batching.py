"""Many concurrent single-item calls, run as few batch calls: what keeps PostgreSQL commits rare.

Every job event is NOTIFYed on commit, and PostgreSQL serialises the commits of
notifying transactions, so one statement per job caps a process's changes a second
however many connections it has (BENCHMARKS.md, item 1). Callers keep their one-item
API; while a batch is in flight, the next calls queue and go together.

A statement also costs the calling process a fixed amount of CPU whatever its size
(loopback syscalls, event-loop wake-ups, the driver; BENCHMARKS.md, item 9), so a saturated
process would otherwise spend most of its time on statements of one or two items. While
callers keep coming together, batches therefore start at most every `min_interval`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch` on whatever has queued, with at most `max_in_flight` batches at once.

    An idle coalescer runs a call at once, alone, so light load waits for nothing.
    Once a batch held more than one call (callers are coming together), the next one
    starts no sooner than `min_interval` after it, unless a full batch is waiting;
    a lone caller, one call at a time, never waits. With `size_of`, a batch also stops
    before its items' sizes add up to more than `max_batch_size` (it always takes one).
    `run_batch` returns one result (or exception) per item, in order; if it raises,
    every item of the batch gets that error.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_batch: int,
        max_in_flight: int,
        min_interval: float = 0.0,
        size_of: Callable[[Item], int] | None = None,
        max_batch_size: int = 0,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._size_of = size_of
        self._max_batch_size = max_batch_size
        self._max_in_flight = max_in_flight
        self._min_interval = min_interval
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        # The sizes of the queued items added up (with `size_of`), so that every arriving call
        # can tell whether a full batch waits without walking the queue.
        self._queued_size = 0
        self._flushing: set[asyncio.Task[None]] = set()
        self._last_started = -math.inf
        self._last_size = 0
        self._wakeup: asyncio.TimerHandle | None = None

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._size_of is not None:
            self._queued_size += self._size_of(item)
        self._start_batches()
        return await future

    async def idle(self) -> None:
        """Return once nothing is queued or running (the callers of what ran may be gone)."""
        while self._queue or self._flushing:
            if self._flushing:
                await asyncio.wait(set(self._flushing))
            else:
                await asyncio.sleep(self._min_interval)  # a batch waits for its interval

    def _start_batches(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue and len(self._flushing) < self._max_in_flight:
            now = loop.time()
            not_before = self._last_started + self._min_interval
            if self._last_size > 1 and now < not_before and not self._full():
                if self._wakeup is None:
                    self._wakeup = loop.call_at(not_before, self._woken)
                return
            count = self._next_batch_count()
            batch = self._queue[:count]
            del self._queue[:count]
            if self._size_of is not None:
                self._queued_size -= sum(self._size_of(item) for item, _ in batch)
            self._last_started, self._last_size = now, count
            task = asyncio.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushed)

    def _full(self) -> bool:
        """Whether the next batch is as large as a batch may be (it would leave calls queued)."""
        if len(self._queue) >= self._max_batch:
            return True
        # Sizes are never negative, so the queue overflows max_batch_size iff its total does.
        return (
            self._size_of is not None
            and len(self._queue) > 1
            and self._queued_size > self._max_batch_size
        )

    def _next_batch_count(self) -> int:
        """How many queued calls the next batch takes."""
        count = min(len(self._queue), self._max_batch)
        if self._size_of is None:
            return count
        total = 0
        for index in range(count):
            total += self._size_of(self._queue[index][0])
            if index and total > self._max_batch_size:
                return index
        return count

    def _woken(self) -> None:
        self._wakeup = None
        self._start_batches()

    def _flushed(self, task: asyncio.Task[None]) -> None:
        self._flushing.discard(task)
        self._start_batches()

    async def _flush(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run_batch([item for item, _ in batch])
        except BaseException as error:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # the caller was cancelled; the change itself stands
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
