"""LeaseKeeper without a database: which claims it renews, and whose task it stops (issue 11, defect 6)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import cast

import pytest

from jobcore.models import Claim
from jobcore.operations import Operation
from jobcore.store import JobStore
from worker.leases import LeaseKeeper


class _Store:
    """Records each renewal; a claim holds while its attempt is the job's current one."""

    def __init__(self) -> None:
        self.renewed: list[list[Claim]] = []
        self.current: dict[uuid.UUID, int] = {}

    async def renew(
        self, claims: Sequence[Claim], *, lease: timedelta
    ) -> set[tuple[uuid.UUID, int]]:
        self.renewed.append(list(claims))
        return {(c.job_id, c.attempt) for c in claims if self.current.get(c.job_id) == c.attempt}


def _claim(job_id: uuid.UUID, attempt: int) -> Claim:
    return Claim(
        job_id=job_id,
        attempt=attempt,
        operation=Operation.SQUARE_SUM,
        numbers=b"",
        sequence=0,
        number_count=0,
    )


async def test_an_old_attempt_ending_leaves_the_new_attempts_lease_renewed() -> None:
    store = _Store()
    keeper = LeaseKeeper(cast(JobStore, store), lease=timedelta(seconds=3))
    job_id = uuid.uuid4()
    old, new = _claim(job_id, 1), _claim(job_id, 2)
    store.current[job_id] = 2
    old_task = asyncio.create_task(asyncio.Event().wait())
    new_task = asyncio.create_task(asyncio.Event().wait())

    # The old attempt lost its claim (its lease ran out) and a new attempt of the same job
    # started in this process before the old one noticed and ended.
    old_attempt = keeper.hold(old, old_task)
    old_attempt.__enter__()
    with keeper.hold(new, new_task):
        old_attempt.__exit__(None, None, None)
        await keeper.renew_once()

        assert store.renewed == [[new]]
        assert not new_task.cancelled()

    for task in (old_task, new_task):
        task.cancel()


async def test_a_claim_that_no_longer_holds_cancels_its_task() -> None:
    store = _Store()
    keeper = LeaseKeeper(cast(JobStore, store), lease=timedelta(seconds=3))
    kept, lost = _claim(uuid.uuid4(), 1), _claim(uuid.uuid4(), 1)
    store.current[kept.job_id] = 1
    kept_task = asyncio.create_task(asyncio.Event().wait())
    lost_task = asyncio.create_task(asyncio.Event().wait())

    with keeper.hold(kept, kept_task), keeper.hold(lost, lost_task):
        await keeper.renew_once()
        await asyncio.sleep(0)

    assert lost_task.cancelled()
    assert not kept_task.done()
    kept_task.cancel()


async def test_nothing_held_renews_nothing() -> None:
    store = _Store()
    keeper = LeaseKeeper(cast(JobStore, store), lease=timedelta(seconds=3))
    task = asyncio.create_task(asyncio.Event().wait())

    with keeper.hold(_claim(uuid.uuid4(), 1), task):
        pass
    await keeper.renew_once()

    assert store.renewed == []
    task.cancel()


async def test_an_old_attempt_running_beside_the_new_one_is_stopped_and_the_new_one_kept() -> None:
    store = _Store()
    keeper = LeaseKeeper(cast(JobStore, store), lease=timedelta(seconds=3))
    job_id = uuid.uuid4()
    old, new = _claim(job_id, 1), _claim(job_id, 2)
    store.current[job_id] = 2
    old_task = asyncio.create_task(asyncio.Event().wait())
    new_task = asyncio.create_task(asyncio.Event().wait())

    with keeper.hold(old, old_task), keeper.hold(new, new_task):
        await keeper.renew_once()
        await asyncio.sleep(0)

        assert store.renewed == [[old, new]]
        assert old_task.cancelled()
        assert not new_task.done()
    new_task.cancel()


async def test_an_attempt_that_ends_during_the_renewal_is_not_reported_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Its job finished meanwhile, so the renewal no longer holds it: that is no lost claim."""
    claim = _claim(uuid.uuid4(), 1)
    task = asyncio.create_task(asyncio.Event().wait())
    holding = None

    class _FinishingStore(_Store):
        async def renew(
            self, claims: Sequence[Claim], *, lease: timedelta
        ) -> set[tuple[uuid.UUID, int]]:
            assert holding is not None
            holding.__exit__(None, None, None)  # the attempt ends while the renewal runs
            return await super().renew(claims, lease=lease)

    keeper = LeaseKeeper(cast(JobStore, _FinishingStore()), lease=timedelta(seconds=3))
    holding = keeper.hold(claim, task)
    holding.__enter__()
    await keeper.renew_once()
    await asyncio.sleep(0)

    assert not task.cancelled()
    assert "lost its claim" not in caplog.text
    task.cancel()
