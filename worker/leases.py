"""Keeps this process's claims alive: one batched renewal for every running job.

If a renewal shows that a claim is gone (the job was cancelled, or taken back
after this process stalled past its lease), the job's task is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from jobcore.models import Claim
from jobcore.store import JobStore
from jobcore.supervision import run_periodically

logger = logging.getLogger(__name__)

# The supervised task (and the name of its fault file).
LEASE_TASK = "lease-keeper"


class LeaseKeeper:
    """Renews the leases of running jobs every third of the lease.

    Claims are held by attempt, not by job: an old attempt of a job can still be running
    here when a new attempt of the same job starts (the old one's lease ran out while this
    process stalled), and each must be renewed, or stopped, on its own.
    """

    def __init__(self, store: JobStore, *, lease: timedelta) -> None:
        self._store = store
        self.lease = lease
        self._held: dict[tuple[uuid.UUID, int], tuple[Claim, asyncio.Task[Any]]] = {}

    @contextlib.contextmanager
    def hold(self, claim: Claim, task: asyncio.Task[Any]) -> Iterator[None]:
        """Keep renewing `claim` while the block runs; cancel `task` if the claim is lost."""
        key = (claim.job_id, claim.attempt)
        self._held[key] = (claim, task)
        try:
            yield
        finally:
            del self._held[key]

    async def renew_once(self) -> None:
        """One batched renewal; cancel the tasks whose claim no longer holds."""
        held = list(self._held.items())
        if not held:
            return
        still_held = await self._store.renew([claim for _, (claim, _) in held], lease=self.lease)
        for key, (claim, task) in held:
            # An attempt that ended during the renewal needs no stopping.
            if key not in still_held and key in self._held:
                logger.warning(
                    "job %s: attempt %d lost its claim; stopping it", claim.job_id, claim.attempt
                )
                task.cancel()

    async def run(self) -> None:
        """Renew until cancelled; a transient store error is retried with backoff."""
        await run_periodically(LEASE_TASK, self.renew_once, interval=self.lease / 3)
