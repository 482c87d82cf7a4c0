"""Tenancy in the store, against a real PostgreSQL: every read and change of a caller stays within
its tenant, idempotency keys are per tenant, events carry their tenant and actor, and the quota
counts each tenant's unfinished jobs exactly through every kind of change."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from jobcore.database import asyncpg_dsn
from jobcore.errors import JobNotFoundError, QuotaExceededError
from jobcore.identity import ALL_SCOPES, Principal
from jobcore.ids import new_job_id
from jobcore.models import Job, JobStatus, Outcome
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore
from tests.eventually import eventually

LEASE = timedelta(minutes=5)
# Tenants of their own per test run, so counts start at zero on a shared database.
_RUN = uuid.uuid4().hex[:8]
ACME = Principal(f"acme-{_RUN}", ALL_SCOPES, "key:jobs_acme0001")
GLOBEX = Principal(f"globex-{_RUN}", ALL_SCOPES, "jwt:user-42")
# A tenant whose quota is small enough to reach.
SMALL = Principal(f"small-{_RUN}", ALL_SCOPES, "key:jobs_small001")
SMALL_QUOTA = 3


def _quota(tenant: str) -> int:
    return SMALL_QUOTA if tenant == SMALL.tenant else 1_000


@pytest.fixture(scope="module")
async def store(isolated_database_url: str) -> AsyncIterator[JobStore]:
    store = await JobStore.connect(isolated_database_url, pool_size=4, max_unfinished_jobs=_quota)
    yield store
    await store.close()


async def _submit(store: JobStore, owner: Principal, *, request_id: str | None = None) -> Job:
    job, _ = await store.create(
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([2.0]),
        owner=owner,
        request_id=request_id,
    )
    return job


async def test_another_tenants_job_is_not_found_for_reading_watching_or_cancelling(
    store: JobStore,
) -> None:
    job = await _submit(store, ACME)

    with pytest.raises(JobNotFoundError):
        await store.get(job.id, tenant=GLOBEX.tenant)
    with pytest.raises(JobNotFoundError):
        await store.cancel(job.id, by=GLOBEX)
    assert await store.events_after(job.id, 0, tenant=GLOBEX.tenant) == []
    # Untouched for its owner.
    assert (await store.get(job.id, tenant=ACME.tenant)).status is JobStatus.PENDING
    assert (await store.get(job.id, tenant=None)).id == job.id


async def test_listing_shows_only_the_callers_tenant(store: JobStore) -> None:
    mine = {(await _submit(store, ACME)).id for _ in range(3)}
    theirs = {(await _submit(store, GLOBEX)).id for _ in range(2)}

    acme_page, _ = await store.list_jobs([], tenant=ACME.tenant, page_size=1000, after=None)
    globex_page, _ = await store.list_jobs([], tenant=GLOBEX.tenant, page_size=1000, after=None)

    assert mine <= {job.id for job in acme_page}
    assert not theirs & {job.id for job in acme_page}
    assert theirs <= {job.id for job in globex_page}
    assert not mine & {job.id for job in globex_page}


async def test_idempotency_keys_are_per_tenant(store: JobStore) -> None:
    key = f"shared-key-{uuid.uuid4()}"
    acme_job = await _submit(store, ACME, request_id=key)
    # The same key, another tenant, even another request: a job of its own, no conflict.
    globex_job, created = await store.create(
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=pack_numbers([9.0]),
        owner=GLOBEX,
        request_id=key,
    )
    retried = await _submit(store, ACME, request_id=key)

    assert created
    assert globex_job.id != acme_job.id
    assert retried.id == acme_job.id


async def test_events_record_their_tenant_and_who_caused_them(store: JobStore) -> None:
    job = await _submit(store, ACME)
    claim = await store.claim(job.id, lease=LEASE)
    assert claim is not None
    assert await store.finish(claim, Outcome(result=4.0))
    cancelled = await _submit(store, ACME)
    await store.cancel(cancelled.id, by=ACME)

    events = await store.events_after(job.id, 0, tenant=ACME.tenant)
    cancel_events = await store.events_after(cancelled.id, 0, tenant=ACME.tenant)

    assert {event.tenant for event in events + cancel_events} == {ACME.tenant}
    assert [event.actor for event in events] == [ACME.actor, "worker", "worker"]
    assert [event.actor for event in cancel_events] == [ACME.actor, ACME.actor]


async def test_the_quota_refuses_a_tenant_at_its_limit_until_a_job_finishes(
    store: JobStore,
) -> None:
    jobs = [await _submit(store, SMALL) for _ in range(SMALL_QUOTA)]
    keyed = f"keyed-{uuid.uuid4()}"

    with pytest.raises(QuotaExceededError) as refused:
        await _submit(store, SMALL, request_id=keyed)
    # Other tenants are not held back by it.
    await _submit(store, GLOBEX)

    assert refused.value.tenant == SMALL.tenant
    assert refused.value.limit == SMALL_QUOTA
    assert await store.unfinished_jobs(SMALL.tenant) == SMALL_QUOTA

    # A claim keeps the job unfinished; its end makes room for exactly one more.
    claim = await store.claim(jobs[0].id, lease=LEASE)
    assert claim is not None
    assert await store.unfinished_jobs(SMALL.tenant) == SMALL_QUOTA
    assert await store.finish(claim, Outcome(result=4.0))
    again = await _submit(store, SMALL, request_id=keyed)
    with pytest.raises(QuotaExceededError):
        await _submit(store, SMALL)

    # A retry of a stored submission is answered even at the limit: it adds no job.
    retried = await _submit(store, SMALL, request_id=keyed)
    assert retried.id == again.id
    await store.cancel(jobs[1].id, by=SMALL)
    assert await store.unfinished_jobs(SMALL.tenant) == SMALL_QUOTA - 1


async def test_concurrent_submissions_are_admitted_only_up_to_the_room_left(
    isolated_database_url: str,
) -> None:
    tenant = Principal(f"burst-{uuid.uuid4().hex[:8]}", ALL_SCOPES, "test")
    limited = await JobStore.connect(
        isolated_database_url, pool_size=2, max_unfinished_jobs=lambda _tenant: 5
    )
    try:
        # Calls made together share statements: each is admitted by its place in its tenant.
        results = await asyncio.gather(
            *(_submit(limited, tenant) for _ in range(12)), return_exceptions=True
        )
    finally:
        await limited.close()

    stored = [result for result in results if isinstance(result, Job)]
    refused = [result for result in results if isinstance(result, QuotaExceededError)]
    assert len(stored) == 5
    assert len(refused) == 7


async def test_the_unfinished_count_follows_requeues_and_deletes(
    store: JobStore, isolated_database_url: str
) -> None:
    tenant = Principal(f"count-{uuid.uuid4().hex[:8]}", ALL_SCOPES, "test")
    jobs = [await _submit(store, tenant) for _ in range(4)]
    claim = await store.claim(jobs[0].id, lease=timedelta(milliseconds=1))
    assert claim is not None

    connection = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    try:
        counted = "SELECT unfinished_jobs FROM tenant_usage WHERE tenant = $1"
        actual = (
            "SELECT count(*) FROM jobs WHERE tenant = $1 AND status IN ('PENDING', 'IN_PROGRESS')"
        )
        assert await connection.fetchval(counted, tenant.tenant) == 4
        # Its lease runs out; after max_attempts=1 the lost job fails: one fewer.
        await eventually(
            lambda: store.requeue_expired(max_attempts=1, limit=100),
            until=lambda requeued: jobs[0].id in {job.id for job in requeued},
        )
        assert await connection.fetchval(counted, tenant.tenant) == 3
        await connection.execute("DELETE FROM jobs WHERE id = $1", jobs[1].id)
        assert await connection.fetchval(counted, tenant.tenant) == 2
        assert await connection.fetchval(counted, tenant.tenant) == await connection.fetchval(
            actual, tenant.tenant
        )
    finally:
        await connection.close()


async def test_a_tenants_events_are_numbered_densely_in_commit_order(
    isolated_database_url: str,
) -> None:
    tenant = Principal(f"positions-{uuid.uuid4().hex[:8]}", ALL_SCOPES, "test")
    # Several processes' worth of pools, so that statements of the tenant really overlap.
    stores = [await JobStore.connect(isolated_database_url, pool_size=2) for _ in range(3)]
    try:
        jobs = await asyncio.gather(*(_submit(stores[i % 3], tenant) for i in range(60)))
        claims = await asyncio.gather(
            *(stores[i % 3].claim(job.id, lease=LEASE) for i, job in enumerate(jobs))
        )
        await asyncio.gather(
            *(
                stores[i % 3].finish(claim, Outcome(result=4.0))
                for i, claim in enumerate(claims)
                if claim is not None
            )
        )
        events = await stores[0].tenant_events_after(tenant.tenant, 0, limit=1000)
        last = await stores[0].last_event_position(tenant.tenant)
        later = await stores[0].tenant_events_after(tenant.tenant, 100, limit=1000)
    finally:
        for store in stores:
            await store.close()

    assert [event.position for event in events] == list(range(1, 181))
    assert last == 180
    assert [event.position for event in later] == list(range(101, 181))
    # Each job's changes appear in its own order, and each event describes its job.
    for job in jobs:
        mine = [event for event in events if event.job_id == job.id]
        assert [event.sequence for event in mine] == [1, 2, 3]
        assert {event.job().created_at for event in mine} == {job.created_at}


async def test_a_rolled_back_change_gives_its_positions_back(
    store: JobStore, isolated_database_url: str
) -> None:
    tenant = Principal(f"rollback-{uuid.uuid4().hex[:8]}", ALL_SCOPES, "test")
    await _submit(store, tenant)
    connection = await asyncpg.connect(asyncpg_dsn(isolated_database_url))
    try:
        transaction = connection.transaction()
        await transaction.start()
        taken = await connection.fetchval("SELECT take_event_positions($1, 5)", tenant.tenant)
        await transaction.rollback()
    finally:
        await connection.close()
    await _submit(store, tenant)

    events = await store.tenant_events_after(tenant.tenant, 0, limit=10)
    assert taken == 2
    assert [event.position for event in events] == [1, 2]


async def test_a_retry_finds_its_own_tenants_job_when_another_tenant_used_the_key_first(
    store: JobStore,
) -> None:
    key = f"first-elsewhere-{uuid.uuid4()}"
    # A tenant whose name sorts before ACME's, so that a lookup forgetting the tenant would
    # meet its job first whichever way it reads (by the (tenant, key) index or by insertion).
    earlier = Principal(f"aardvark-{_RUN}", ALL_SCOPES, "key:jobs_aardvark")
    theirs, _ = await store.create(
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=pack_numbers([7.0]),
        owner=earlier,
        request_id=key,
    )
    mine = await _submit(store, ACME, request_id=key)

    retried, created = await store.create(
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([2.0]),
        owner=ACME,
        request_id=key,
    )

    assert not created
    assert retried.id == mine.id != theirs.id
