"""One asyncio loop per worker process, on its own thread, shared by all of Celery's task threads.

Celery's task threads only wait for the claims; the jobs then run on the loop, so
the simulated delay, the database and the event listener cost coroutines, not
threads, and WORKER_CONCURRENCY jobs can be in flight per process.

The loop's background tasks (lease renewal, the LISTEN connection) are supervised: if
one fails, the whole worker process exits non-zero at once, to be restarted. Its
running jobs are recovered by their leases and its unstarted wake-ups by the
server's maintenance; a worker that took jobs without renewing their leases would
only make them run twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from jobcore.events import JobEventHub
from jobcore.settings import Settings
from jobcore.store import JobStore
from jobcore.supervision import FAILED_TASK_EXIT_STATUS, Supervisor, TaskFailure
from worker.leases import LEASE_TASK, LeaseKeeper
from worker.slots import ByteBudget, JobSlots

T = TypeVar("T")

logger = logging.getLogger(__name__)

# The numbers of large jobs one worker process holds at once while computing them (a job
# larger than this is computed alone); small jobs' numbers come with their claims.
NUMBERS_IN_MEMORY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class WorkerServices:
    """What running a job needs: the store, the event hub (for cancellation) and the leases.

    `capacity` bounds the jobs in flight, giving slots to the most urgent jobs first;
    `numbers_memory` bounds the numbers of large jobs held while they are computed;
    `running` holds the tasks of the jobs started or waiting for a slot.
    """

    store: JobStore
    hub: JobEventHub
    leases: LeaseKeeper
    capacity: JobSlots
    numbers_memory: ByteBudget
    running: set[asyncio.Task[None]]

    @classmethod
    async def start(cls, settings: Settings, *, supervisor: Supervisor) -> WorkerServices:
        """Connect, listen for job events and renew leases (under `supervisor`), on the running loop."""
        store = await JobStore.connect(settings.database_url, pool_size=settings.db_pool_size)
        hub = JobEventHub(settings.database_url)
        await hub.start(timeout_seconds=5, supervisor=supervisor)
        leases = LeaseKeeper(store, lease=timedelta(seconds=settings.job_lease_seconds))
        supervisor.start(LEASE_TASK, leases.run())
        return cls(
            store=store,
            hub=hub,
            leases=leases,
            capacity=JobSlots(settings.worker_slots),
            numbers_memory=ByteBudget(NUMBERS_IN_MEMORY_BYTES),
            running=set(),
        )

    async def drain(self, *, timeout_seconds: float) -> None:
        """Wait until the running jobs end (at most `timeout_seconds`; leases cover the rest)."""
        if self.running:
            await asyncio.wait(set(self.running), timeout=timeout_seconds)


def end_worker_process(failure: TaskFailure) -> None:
    """Exit the whole process now, non-zero: a worker with a dead background task must not go on.

    Not Celery's warm shutdown: it would wait for running jobs whose leases may no longer be
    renewed, and Celery would then exit 0, so the process manager would not see a failure.
    """
    logger.critical(
        "background task %s failed; ending the worker process (status %d) to be restarted",
        failure.name,
        FAILED_TASK_EXIT_STATUS,
    )
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(FAILED_TASK_EXIT_STATUS)


class AsyncRuntime:
    """A background event loop with the process's WorkerServices and their supervisor."""

    def __init__(self, settings: Settings) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobs-loop", daemon=True
        )
        self._thread.start()
        self.supervisor = Supervisor(on_failure=end_worker_process)
        self.services = self.run(WorkerServices.start(settings, supervisor=self.supervisor))

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result from the calling thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


_runtime: AsyncRuntime | None = None
_runtime_lock = threading.Lock()


def running_runtime() -> AsyncRuntime | None:
    """The process's runtime if it was started (it is not in Flower or before the first task)."""
    return _runtime


def get_runtime(settings: Settings) -> AsyncRuntime:
    """The process's runtime, created on first use (after Celery has forked, never before)."""
    global _runtime  # noqa: PLW0603 - one loop per process is the point
    with _runtime_lock:
        if _runtime is None:
            _runtime = AsyncRuntime(settings)
        return _runtime
