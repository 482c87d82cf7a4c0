"""The worker's job slots, a semaphore that hands a freed slot to the most urgent waiter, and
the budget of numbers it holds in memory while computing.

A worker process runs at most WORKER_CONCURRENCY jobs at once; the jobs of the messages
its claiming threads hold wait here for a slot. asyncio.Semaphore would serve them in
arrival order, so a job of a tenant with a short backlog, taken from a top-priority
message, would queue behind the hundreds of a deep backlog already waiting in this
process. Here the slot goes to the lowest priority number (kombu's Redis convention: 0
first), in arrival order within a priority.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator


class JobSlots:
    """Up to `size` holders at once; `acquire(priority)` waits for a slot, most urgent first.

    A released slot passes straight to the waiter it is for, so no later caller can take it
    in between, and a free slot means nobody waits.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"a worker needs at least one slot, not {size}")
        self._size = size
        self._free = size
        # (priority, arrival, future): a heap, so the most urgent and then the oldest is first.
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    @property
    def size(self) -> int:
        """How many holders there may be at once."""
        return self._size

    @property
    def free(self) -> int:
        """Slots nobody holds right now."""
        return self._free

    @property
    def waiting(self) -> int:
        """Callers waiting for a slot."""
        return len(self._waiters)

    async def acquire(self, priority: int) -> None:
        """Take a slot, waiting behind those of a more urgent (lower) or the same priority."""
        if self._free > 0:
            self._free -= 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (priority, next(self._arrivals), future)
        heapq.heappush(self._waiters, entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # The slot was handed over as the waiter was cancelled: it goes to the next.
                self.release()
            elif entry in self._waiters:
                self._waiters.remove(entry)
                heapq.heapify(self._waiters)
            raise

    def release(self) -> None:
        """Give back a slot: to the most urgent waiter if there is one, else to the free ones."""
        while self._waiters:
            _, _, future = heapq.heappop(self._waiters)
            # A waiter cancelled a moment ago is still here until its task runs: skip it.
            if not future.done():
                future.set_result(None)
                return
        if self._free >= self._size:
            raise ValueError("released a slot that was not held")
        self._free += 1


class ByteBudget:
    """At most `limit` bytes held at once, granted in arrival order: what bounds the numbers a
    worker process holds while it computes, however many jobs wake up together.

    A request above the whole limit holds all of it (so it runs alone rather than never).
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"a byte budget needs at least one byte, not {limit}")
        self._limit = limit
        self._held = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    @property
    def held(self) -> int:
        """Bytes granted and not yet given back."""
        return self._held

    @contextlib.asynccontextmanager
    async def hold(self, size: int) -> AsyncIterator[None]:
        """Hold `size` bytes (at most the whole limit) for the block, waiting behind earlier callers."""
        size = min(size, self._limit)
        if not self._waiters and self._held + size <= self._limit:
            self._held += size
        else:
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            entry = (size, future)
            self._waiters.append(entry)
            try:
                await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(size)  # granted as it was cancelled: pass it on
                else:
                    self._waiters.remove(entry)
                    self._grant()  # the head may have been what held the others back
                raise
        try:
            yield
        finally:
            self._release(size)

    def _release(self, size: int) -> None:
        self._held -= size
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self._held + self._waiters[0][0] <= self._limit:
            size, future = self._waiters.popleft()
            if not future.done():
                self._held += size
                future.set_result(None)
