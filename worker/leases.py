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
    """Renews the leases of running jobs every third of the lease."""

    def __init__(self, store: JobStore, *, lease: timedelta) -> None:
        self._store = store
        self.lease = lease
        self._held: dict[uuid.UUID, tuple[Claim, asyncio.Task[Any]]] = {}

    @contextlib.contextmanager
    def hold(self, claim: Claim, task: asyncio.Task[Any]) -> Iterator[None]:
        """Keep renewing `claim` while the block runs; cancel `task` if the claim is lost."""
        held = (claim, task)
        self._held[claim.job_id] = held
        try:
            yield
        finally:
            # Only our own entry: a newer attempt of the same job may have replaced it, and
            # its lease must go on being renewed after this older attempt ends.
            if self._held.get(claim.job_id) == held:
                del self._held[claim.job_id]

    async def renew_once(self) -> None:
        """One batched renewal; cancel the tasks whose claim no longer holds."""
        held = list(self._held.values())
        if not held:
            return
        still_held = await self._store.renew([claim for claim, _ in held], lease=self.lease)
        for claim, task in held:
            if claim.job_id not in still_held and self._held.get(claim.job_id) == (claim, task):
                logger.warning(
                    "job %s: attempt %d lost its claim; stopping it", claim.job_id, claim.attempt
                )
                task.cancel()

    async def run(self) -> None:
        """Renew until cancelled; a transient store error is retried with backoff."""
        await run_periodically(LEASE_TASK, self.renew_once, interval=self.lease / 3)
