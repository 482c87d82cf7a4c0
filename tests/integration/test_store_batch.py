"""JobStore.create_batch against a real PostgreSQL: one transaction whatever the number of
statements, every refusal the whole batch's, the quota counted for the batch as a whole, and each
stored job told of after commit even when its caller is gone."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from jobcore import store as store_module
from jobcore.errors import IdempotencyKeyReusedError, QuotaExceededError
from jobcore.identity import ALL_SCOPES, Principal
from jobcore.ids import new_job_id
from jobcore.models import Job
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore, Submission

_RUN = uuid.uuid4().hex[:8]
QUOTA = 3


def _tenant(name: str) -> Principal:
    """A tenant of its own for one test: its counts start at zero on the shared database."""
    return Principal(f"{name}-{_RUN}", ALL_SCOPES, "key:jobs_batch001")


def _quota(tenant: str) -> int:
    return QUOTA if tenant.startswith("small") else 100_000


@pytest.fixture(scope="module")
async def store(isolated_database_url: str) -> AsyncIterator[JobStore]:
    store = await JobStore.connect(isolated_database_url, pool_size=4, max_unfinished_jobs=_quota)
    yield store
    await store.close()


def _jobs(count: int, *, keys: str | None = None, value: float = 2.0) -> list[Submission]:
    return [
        Submission(
            job_id=new_job_id(),
            operation=Operation.SQUARE_SUM,
            numbers=pack_numbers([value, float(index)]),
            request_id=f"{keys}-{index}" if keys else None,
        )
        for index in range(count)
    ]


async def _stored(store: JobStore, owner: Principal) -> list[Job]:
    page, _ = await store.list_jobs([], tenant=owner.tenant, page_size=1000, after=None)
    return page


async def test_a_batch_comes_back_in_order_and_a_retry_finds_the_same_jobs(
    store: JobStore,
) -> None:
    owner = _tenant("order")
    batch = _jobs(5, keys="order")

    first = await store.create_batch(batch, owner=owner)
    # The retry's new job ids are never used: each key finds its job.
    retry = [Submission(new_job_id(), s.operation, s.numbers, s.request_id) for s in batch]
    again = await store.create_batch(retry, owner=owner)

    assert [job.id for job, _ in first] == [submission.job_id for submission in batch]
    assert all(created for _, created in first)
    assert [(job.id, created) for job, created in again] == [(job.id, False) for job, _ in first]
    assert len(await _stored(store, owner)) == 5


async def test_a_batch_split_into_several_statements_is_still_all_or_nothing(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = _tenant("split")
    taken, _ = await store.create(
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=pack_numbers([9.0]),
        owner=owner,
        request_id="split-5",
    )
    # Two jobs' numbers per statement: the batch below takes three statements.
    monkeypatch.setattr(store_module, "_MAX_BATCH_NUMBER_BYTES", 32)

    with pytest.raises(IdempotencyKeyReusedError):
        await store.create_batch(_jobs(6, keys="split"), owner=owner)
    fits = await store.create_batch(_jobs(5, keys="other"), owner=owner)

    assert len(fits) == 5
    assert {job.id for job in await _stored(store, owner)} == {
        taken.id,
        *(job.id for job, _ in fits),
    }


async def test_the_whole_batch_must_fit_within_the_quota(store: JobStore) -> None:
    owner = _tenant("small-fit")

    with pytest.raises(QuotaExceededError):
        await store.create_batch(_jobs(QUOTA + 1), owner=owner)
    nothing = await _stored(store, owner)
    full = await store.create_batch(_jobs(QUOTA, keys="fit"), owner=owner)
    with pytest.raises(QuotaExceededError):
        await store.create_batch(_jobs(1), owner=owner)
    # A retry of the stored batch is no new work: the same jobs, quota or not.
    again = await store.create_batch(_jobs(QUOTA, keys="fit"), owner=owner)

    assert nothing == []
    assert len(full) == QUOTA
    assert [job.id for job, _ in again] == [job.id for job, _ in full]
    assert await store.unfinished_jobs(owner.tenant) == QUOTA


async def test_jobs_found_by_key_do_not_take_the_room_of_new_ones(store: JobStore) -> None:
    owner = _tenant("small-mixed")
    (first, _), *_ = await store.create_batch(_jobs(1, keys="mixed"), owner=owner)

    # mixed-0 exists; mixed-1 and mixed-2 are new and fill the quota exactly.
    stored = await store.create_batch(_jobs(3, keys="mixed"), owner=owner)

    assert [created for _, created in stored] == [False, True, True]
    assert stored[0][0].id == first.id
    assert await store.unfinished_jobs(owner.tenant) == QUOTA


async def test_each_job_is_told_of_after_commit_even_when_the_caller_is_gone(
    store: JobStore,
) -> None:
    owner = _tenant("gone")
    told: list[tuple[uuid.UUID, bool, int]] = []
    batch = _jobs(50)

    call = asyncio.create_task(
        store.create_batch(
            batch,
            owner=owner,
            on_stored=lambda job, created, backlog: told.append((job.id, created, backlog)),
        )
    )
    await asyncio.sleep(0)  # the transaction has started
    call.cancel()
    await store.finish_writes(timeout_seconds=10)

    assert call.cancelled()
    assert [job_id for job_id, _, _ in told] == [submission.job_id for submission in batch]
    assert [backlog for _, _, backlog in told] == list(range(50))
    assert all(created for _, created, _ in told)
    assert len(await _stored(store, owner)) == 50


async def test_a_key_may_appear_once_in_a_batch(store: JobStore) -> None:
    batch = _jobs(2, keys="twice")
    twice = [batch[0], Submission(new_job_id(), Operation.SQUARE_SUM, batch[0].numbers, "twice-0")]

    with pytest.raises(ValueError, match="more than once"):
        await store.create_batch(twice, owner=_tenant("twice"))
