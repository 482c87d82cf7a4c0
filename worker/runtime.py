"""One asyncio loop per worker process, on its own thread, shared by all of Celery's task threads.

Celery's task threads block on a future while the loop runs the job, so the
database pool, the simulated delay and the event listener cost coroutines, not
threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from jobcore.events import JobEventHub
from jobcore.settings import Settings
from jobcore.store import JobStore, create_engine
from worker.leases import LeaseKeeper

T = TypeVar("T")


class AsyncRuntime:
    """A background event loop with the process's store, event hub and lease keeper."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="jobs-loop", daemon=True
        )
        self._thread.start()
        engine = create_engine(settings.database_url, pool_size=settings.db_pool_size)
        self.store = JobStore(engine)
        self.hub = JobEventHub(settings.database_url)
        self.leases = LeaseKeeper(self.store, lease=timedelta(seconds=settings.job_lease_seconds))
        self.run(self._start())

    async def _start(self) -> None:
        await self.hub.start(timeout_seconds=5)
        self._renewals = asyncio.create_task(self.leases.run(), name="lease-renewal")

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for its result from the calling thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()


_runtime: AsyncRuntime | None = None
_runtime_lock = threading.Lock()


def get_runtime(settings: Settings) -> AsyncRuntime:
    """The process's runtime, created on first use (after Celery has forked, never before)."""
    global _runtime  # noqa: PLW0603 - one loop per process is the point
    with _runtime_lock:
        if _runtime is None:
            _runtime = AsyncRuntime(settings)
        return _runtime
