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

from jobcore.errors import StoreUnavailableError
from jobcore.models import Claim
from jobcore.store import JobStore

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Renews the leases of running jobs every third of the lease."""

    def __init__(self, store: JobStore, *, lease: timedelta) -> None:
        self._store = store
        self.lease = lease
        self._held: dict[uuid.UUID, tuple[Claim, asyncio.Task[Any]]] = {}

    @contextlib.contextmanager
    def hold(self, claim: Claim, task: asyncio.Task[Any]) -> Iterator[None]:
        """Keep renewing `claim` while the block runs; cancel `task` if the claim is lost."""
        self._held[claim.job_id] = (claim, task)
        try:
            yield
        finally:
            self._held.pop(claim.job_id, None)

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
        """Renew until cancelled; a database outage is retried at the next tick."""
        while True:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            try:
                await self.renew_once()
            except StoreUnavailableError:
                logger.warning("lease renewal skipped: PostgreSQL unavailable")
