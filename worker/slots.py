"""The worker's job slots: a semaphore that hands a freed slot to the most urgent waiter.

A worker process runs at most WORKER_CONCURRENCY jobs at once; the jobs of the messages
its claiming threads hold wait here for a slot. asyncio.Semaphore would serve them in
arrival order, so a job of a tenant with a short backlog, taken from a top-priority
message, would queue behind the hundreds of a deep backlog already waiting in this
process. Here the slot goes to the lowest priority number (kombu's Redis convention: 0
first), in arrival order within a priority.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools


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
