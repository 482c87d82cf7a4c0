"""Keeps this process's claims alive: one batched renewal for every running job.

If a renewal shows that a claim is gone (the job was cancelled, or taken back
after this process stalled past its lease), the job's task is cancelled. If no
renewal gets through at all (PostgreSQL unreachable, or the network between
dropping packets in silence), the process cannot prove it still holds the claim
once the lease it last confirmed runs out: the job's task is cancelled then too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from jobcore.errors import StoreUnavailableError
from jobcore.models import Claim
from jobcore.store import JobStore
from jobcore.supervision import run_periodically

logger = logging.getLogger(__name__)

# The supervised task (and the name of its fault file).
LEASE_TASK = "lease-keeper"
# Renewals per lease; each one waits at most this fraction of the lease for its answer, so a
# renewal that never answers is given up (and tried again) while the lease still runs.
RENEWALS_PER_LEASE = 3


@dataclass
class _Held:
    """One running attempt: its claim, its task and the timer that stops it when its lease ends."""

    claim: Claim
    task: asyncio.Task[Any]
    expiry: asyncio.TimerHandle | None = None
    # Stopped by the keeper (claim gone or lease run out): renewed no more, reported once.
    lost: bool = False


class LeaseKeeper:
    """Renews the leases of running jobs every third of the lease.

    Claims are held by attempt, not by job: an old attempt of a job can still be running
    here when a new attempt of the same job starts (the old one's lease ran out while this
    process stalled), and each must be renewed, or stopped, on its own.

    Each attempt is stopped when the lease this process last confirmed for it runs out, on
    the loop's monotonic clock: a renewal confirms at most `lease` from the moment it was
    sent (PostgreSQL counts the lease from when it ran the statement, later), so this
    process always gives up a claim no later than the store does. A timer, not the renewal,
    does the stopping, so it happens on time however long a renewal hangs.
    """

    def __init__(self, store: JobStore, *, lease: timedelta) -> None:
        self._store = store
        self.lease = lease
        self._lease_seconds = lease.total_seconds()
        self._renewal_timeout_seconds = self._lease_seconds / RENEWALS_PER_LEASE
        self._held: dict[tuple[uuid.UUID, int], _Held] = {}

    @contextlib.contextmanager
    def hold(self, claim: Claim, task: asyncio.Task[Any]) -> Iterator[None]:
        """Keep renewing `claim` while the block runs; cancel `task` if the claim is lost or
        its lease runs out unconfirmed.

        The first lease is counted from here: the claim was made just before.
        """
        key = (claim.job_id, claim.attempt)
        held = _Held(claim, task)
        loop = asyncio.get_running_loop()
        self._held[key] = held
        self._confirmed(key, held, until=loop.time() + self._lease_seconds)
        try:
            yield
        finally:
            if held.expiry is not None:
                held.expiry.cancel()
            del self._held[key]

    async def renew_once(self) -> None:
        """One batched renewal; cancel the tasks whose claim no longer holds.

        A renewal with no answer within a third of the lease fails (StoreUnavailableError,
        retried by `run`) and confirms nothing.
        """
        held = [(key, entry) for key, entry in self._held.items() if not entry.lost]
        if not held:
            return
        sent = asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(self._renewal_timeout_seconds):
                still_held = await self._store.renew(
                    [entry.claim for _, entry in held], lease=self.lease
                )
        except TimeoutError:
            raise StoreUnavailableError(
                f"the lease renewal got no answer within {self._renewal_timeout_seconds:g} s"
            ) from None
        for key, entry in held:
            # An attempt that ended during the renewal needs no stopping.
            if self._held.get(key) is not entry or entry.lost:
                continue
            if key in still_held:
                self._confirmed(key, entry, until=sent + self._lease_seconds)
            else:
                self._stop(entry, "lost its claim; stopping it")

    async def run(self) -> None:
        """Renew until cancelled; a transient store error is retried with backoff."""
        await run_periodically(
            LEASE_TASK, self.renew_once, interval=self.lease / RENEWALS_PER_LEASE
        )

    def _confirmed(self, key: tuple[uuid.UUID, int], held: _Held, *, until: float) -> None:
        """The claim is known to hold until `until` (loop time): stop its task then, unless
        a later renewal confirms more."""
        if held.expiry is not None:
            held.expiry.cancel()
        held.expiry = asyncio.get_running_loop().call_at(until, self._lease_ran_out, key, held)

    def _lease_ran_out(self, key: tuple[uuid.UUID, int], held: _Held) -> None:
        if self._held.get(key) is not held or held.lost:
            return
        self._stop(
            held,
            f"could not renew its lease within {self._lease_seconds:g} s; stopping it (the job "
            "runs again elsewhere, and this attempt's outcome would be refused)",
        )

    @staticmethod
    def _stop(held: _Held, why: str) -> None:
        """Cancel the attempt's task, once, saying why."""
        held.lost = True
        if held.expiry is not None:
            held.expiry.cancel()
        logger.warning("job %s: attempt %d %s", held.claim.job_id, held.claim.attempt, why)
        held.task.cancel()
