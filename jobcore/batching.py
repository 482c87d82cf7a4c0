"""Many concurrent single-item calls, run as few batch calls: what keeps PostgreSQL commits rare.

Every job event is NOTIFYed on commit, and PostgreSQL serialises the commits of
notifying transactions, so one statement per job caps a process near a thousand
changes a second however many connections it has. Callers keep their one-item
API; while a batch is in flight, the next calls queue and go together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs `run_batch` on whatever has queued, with at most `max_in_flight` batches at once.

    An idle coalescer runs a call at once, alone, so light load waits for nothing.
    `run_batch` returns one result (or exception) per item, in order; if it raises,
    every item of the batch gets that error.
    """

    def __init__(
        self,
        run_batch: Callable[[list[Item]], Awaitable[Sequence[Result | BaseException]]],
        *,
        max_batch: int,
        max_in_flight: int,
    ) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._flushing: set[asyncio.Task[None]] = set()

    async def __call__(self, item: Item) -> Result:
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._start_batches()
        return await future

    def _start_batches(self) -> None:
        while self._queue and len(self._flushing) < self._max_in_flight:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            task = asyncio.create_task(self._flush(batch))
            self._flushing.add(task)
            task.add_done_callback(self._flushed)

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
