"""Wakes workers for new jobs: one background publisher that batches them.

SubmitJob only queues the job id here (after the job is committed), so a call never
waits on Redis. The jobs stored within a few milliseconds, or while the previous
message was being published, go out together in one message. A publish that fails marks its jobs,
and every wake-up still waiting, undispatched in PostgreSQL, and maintenance (of any server)
sends them again: the broker can lose a wake-up, never a job, and a broker that stopped
answering costs one publish timeout, not one per message.

Fair dispatch: each wake-up has a priority chosen by how deep its tenant is in backlog
(`priority_for_backlog`), and messages are published and consumed most urgent first, so a
tenant with a few jobs does not wait behind the thousands another has queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

import redis.exceptions

from jobcore.celery_app import LOWEST_PRIORITY, TOP_PRIORITY, Wakeup
from jobcore.errors import TransientError
from jobcore.store import JobStore
from jobcore.supervision import TransientEpisode, inject_fault
from jobcore.tracing import current_traceparent
from jobcore.wakeup_publisher import WakeupPublisher
from server.metrics import DISPATCH_BATCH_SIZE

logger = logging.getLogger(__name__)

# Jobs per message at most: a worker claims a message's jobs before acking it.
MAX_JOBS_PER_MESSAGE = 100
# How long a wake-up may wait for others to share its message: a message costs the server
# and the worker that takes it far more than one more job in it does (BENCHMARKS.md, item
# 3), and a worker still hears of a job within this long of its being stored.
LINGER_SECONDS = 0.01
# The supervised task (and the name of its fault file).
DISPATCHER_TASK = "dispatcher"
# What a broker that is down, full or slow raises: the jobs go back to maintenance. Anything
# else is a bug and ends the task, and with it the process.
_BROKER_ERRORS = (redis.exceptions.RedisError, OSError, TimeoutError, TransientError)

# The rule: a job whose tenant has fewer unfinished jobs ahead of it than one message holds
# (a tenant submitting by hand, or keeping up with its work) gets the top priority; each lower
# step is for a backlog ten times deeper; 10,000 and more wait at the lowest. A tenant with a
# deep backlog keeps getting served (workers take lower steps whenever the upper ones are
# empty), but a newcomer's job overtakes its queue instead of waiting for all of it. The
# steps are kombu's Redis steps, 0 first (jobcore.celery_app.PRIORITY_STEPS).
_PRIORITY_BY_BACKLOG = (
    (MAX_JOBS_PER_MESSAGE, TOP_PRIORITY),
    (10 * MAX_JOBS_PER_MESSAGE, 3),
    (100 * MAX_JOBS_PER_MESSAGE, 6),
)


def priority_for_backlog(backlog: int) -> int:
    """The wake-up priority of a job with `backlog` unfinished jobs of its tenant ahead of it."""
    for below, priority in _PRIORITY_BY_BACKLOG:
        if backlog < below:
            return priority
    return LOWEST_PRIORITY


class Dispatcher:
    """Publishes wake-up messages from one task, one message in flight at a time.

    A message holds jobs of one priority; the most urgent waiting are published first.
    """

    def __init__(self, publisher: WakeupPublisher, store: JobStore) -> None:
        self._publisher = publisher
        self._store = store
        # Wake-ups not yet published, by priority.
        self._waiting: dict[int, list[Wakeup]] = {}
        self._more = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._broker_trouble = TransientEpisode(
            "publishing wake-ups to the broker", meanwhile="maintenance sends those jobs again"
        )

    async def waiting_in_broker(self) -> int:
        """How many wake-up messages wait in the broker's queue (redis errors propagate)."""
        return await self._publisher.waiting()

    def dispatch(
        self, job_id: uuid.UUID, *, traceparent: str | None = None, backlog: int = 0
    ) -> None:
        """Queue a wake-up for a committed job; never blocks.

        It carries `traceparent`, or else the trace context of the code that calls this.
        `backlog` is how many unfinished jobs the job's tenant had ahead of it: it sets the
        wake-up's priority.
        """
        priority = priority_for_backlog(backlog)
        wakeup = Wakeup(job_id, traceparent or current_traceparent(), priority)
        self._waiting.setdefault(priority, []).append(wakeup)
        self._idle.clear()
        self._more.set()

    async def run(self) -> None:
        """Publish until cancelled."""
        while True:
            await self._more.wait()
            inject_fault(DISPATCHER_TASK)
            if all(len(level) < MAX_JOBS_PER_MESSAGE for level in self._waiting.values()):
                await asyncio.sleep(LINGER_SECONDS)
            self._more.clear()
            # Chosen again after each publish: an urgent wake-up stored meanwhile goes next.
            while batch := self._take_batch():
                if not await self._publish(batch):
                    # The broker is down or unreachable: every wake-up waiting would cost
                    # another publish timeout before maintenance got it, so all of them go to
                    # maintenance at once.
                    while batch := self._take_batch():
                        await self._hand_back(batch)
            self._idle.set()

    def _take_batch(self) -> list[Wakeup]:
        """Up to a message's worth of the most urgent waiting wake-ups (none: empty)."""
        if not self._waiting:
            return []
        priority = min(self._waiting)
        level = self._waiting[priority]
        batch = level[:MAX_JOBS_PER_MESSAGE]
        del level[:MAX_JOBS_PER_MESSAGE]
        if not level:
            del self._waiting[priority]
        return batch

    async def flush(self, *, timeout_seconds: float) -> None:
        """Wait (at most `timeout_seconds`) until every queued wake-up was published or handed back."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout_seconds)

    async def _publish(self, batch: list[Wakeup]) -> bool:
        """Publish one message; False (its jobs handed to maintenance) if the broker failed."""
        try:
            await self._publisher.publish(batch)
        except _BROKER_ERRORS as error:
            # The jobs are stored, so their clients were right to get OK: maintenance sends them
            # (the episode's warning says so once, not once per message).
            self._broker_trouble.failed(error)
            await self._hand_back(batch)
            return False
        self._broker_trouble.recovered()
        DISPATCH_BATCH_SIZE.observe(len(batch))
        return True

    async def _hand_back(self, batch: list[Wakeup]) -> None:
        """Mark the jobs undispatched, so that the next sweep (of any server) sends them."""
        job_ids = [wakeup.job_id for wakeup in batch]
        try:
            await self._store.mark_undispatched(job_ids)
        except TransientError as store_error:
            # Their dispatched_at stays set: the sweep resends them once it is stale.
            logger.warning("could not mark %d jobs undispatched (%s)", len(job_ids), store_error)
