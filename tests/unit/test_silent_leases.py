"""LeaseKeeper when renewals never answer (a network that drops packets in silence, issue 17):
each renewal is given up within a third of the lease, and an attempt whose lease this process
could not confirm is stopped when that lease runs out, with one warning."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TypeVar, cast

import pytest

from jobcore.errors import StoreUnavailableError
from jobcore.models import Claim
from jobcore.operations import Operation
from jobcore.store import JobStore
from tests.eventually import eventually
from worker.leases import LeaseKeeper

T = TypeVar("T")


class _SilentStore:
    """A store whose renewals get no answer until `answering` is set."""

    def __init__(self) -> None:
        self.answering = asyncio.Event()
        self.renewals = 0

    async def renew(
        self, claims: Sequence[Claim], *, lease: timedelta
    ) -> set[tuple[uuid.UUID, int]]:
        self.renewals += 1
        await self.answering.wait()
        return {(claim.job_id, claim.attempt) for claim in claims}


async def _now(value: T) -> T:
    return value


def _claim() -> Claim:
    return Claim(
        job_id=uuid.uuid4(),
        attempt=1,
        operation=Operation.SQUARE_SUM,
        numbers=b"",
        sequence=0,
        number_count=0,
    )


async def test_a_renewal_that_never_answers_fails_as_unavailable() -> None:
    keeper = LeaseKeeper(cast(JobStore, _SilentStore()), lease=timedelta(seconds=0.3))
    task = asyncio.create_task(asyncio.Event().wait())

    with keeper.hold(_claim(), task), pytest.raises(StoreUnavailableError, match="no answer"):
        await keeper.renew_once()

    task.cancel()


async def test_an_attempt_whose_lease_runs_out_unconfirmed_is_stopped_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = _SilentStore()
    keeper = LeaseKeeper(cast(JobStore, store), lease=timedelta(seconds=0.5))
    task = asyncio.create_task(asyncio.Event().wait())
    renewing = asyncio.create_task(keeper.run())

    with keeper.hold(_claim(), task):
        await eventually(lambda: _now(task.done()), until=bool)
        assert task.cancelled()
        assert not renewing.done()  # renewals that time out are retried, not fatal
        renewing.cancel()
        # An attempt already stopped is renewed no more, and reported once.
        tried = store.renewals
        await keeper.renew_once()
        assert store.renewals == tried

    assert caplog.text.count("could not renew its lease") == 1


async def test_confirmed_renewals_keep_the_attempt_running_past_its_first_lease() -> None:
    store = _SilentStore()
    store.answering.set()
    lease = timedelta(seconds=0.6)
    keeper = LeaseKeeper(cast(JobStore, store), lease=lease)
    task = asyncio.create_task(asyncio.Event().wait())
    renewing = asyncio.create_task(keeper.run())

    with keeper.hold(_claim(), task):
        # Renewals every third of the lease: five of them span more than a whole lease.
        await eventually(lambda: _now(store.renewals), until=lambda count: count >= 5)
        assert not task.done()

    renewing.cancel()
    task.cancel()


async def test_a_renewal_answering_again_in_time_keeps_the_attempt() -> None:
    store = _SilentStore()
    keeper = LeaseKeeper(cast(JobStore, store), lease=timedelta(seconds=1.5))
    task = asyncio.create_task(asyncio.Event().wait())

    with keeper.hold(_claim(), task):
        with pytest.raises(StoreUnavailableError):
            await keeper.renew_once()  # the first third of the lease passes unanswered
        store.answering.set()
        await keeper.renew_once()
        assert not task.done()

    task.cancel()
