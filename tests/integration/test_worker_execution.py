"""worker.execution in this process against the isolated database: claiming a message's jobs
within capacity, deadlines, prompt cancel, duplicates."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from jobcore.celery_app import Wakeup
from jobcore.events import RESYNC, InboxItem, JobEventHub
from jobcore.ids import new_job_id
from jobcore.models import Claim, JobStatus
from jobcore.operations import Operation, pack_numbers
from jobcore.store import CLAIM_NUMBERS_MAX, JobStore
from tests.eventually import eventually
from tests.owners import TEST_OWNER
from worker.execution import _until_taken_away, execute_job, start_jobs
from worker.leases import LeaseKeeper
from worker.runtime import WorkerServices
from worker.slots import ByteBudget, JobSlots

CAPACITY = 4


@pytest.fixture
async def services(isolated_database_url: str) -> AsyncIterator[WorkerServices]:
    store = await JobStore.connect(isolated_database_url, pool_size=4)
    hub = JobEventHub(isolated_database_url)
    await hub.start(timeout_seconds=10)
    yield WorkerServices(
        store=store,
        hub=hub,
        leases=LeaseKeeper(store, lease=timedelta(seconds=30)),
        capacity=JobSlots(CAPACITY),
        # Smaller than the large job below, which must then run alone rather than never.
        numbers_memory=ByteBudget(1024),
        running=set(),
    )
    await hub.stop()
    await store.close()


async def test_a_job_runs_to_success(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=pack_numbers([2.0, 3.0]),
    )

    await execute_job(services, job.id, delay=timedelta(0), deadline=timedelta(seconds=30))

    done = await services.store.get(job.id, tenant=None)
    assert done.status == JobStatus.SUCCESS
    assert done.outcome is not None
    assert done.outcome.result == 35.0


async def test_a_large_job_is_claimed_without_its_numbers_and_computed_from_them(
    services: WorkerServices,
) -> None:
    small, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([1.0] * CLAIM_NUMBERS_MAX),
    )
    large, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([2.0] * (CLAIM_NUMBERS_MAX + 1)),
    )
    lease = timedelta(seconds=30)

    small_claim = await services.store.claim(small.id, lease=lease)
    large_claim = await services.store.claim(large.id, lease=lease)

    assert small_claim is not None
    assert small_claim.numbers == pack_numbers([1.0] * CLAIM_NUMBERS_MAX)
    assert large_claim is not None
    assert large_claim.numbers is None
    assert large_claim.number_count == CLAIM_NUMBERS_MAX + 1
    assert await services.store.numbers(
        large.id, number_count=CLAIM_NUMBERS_MAX + 1
    ) == pack_numbers([2.0] * (CLAIM_NUMBERS_MAX + 1))
    assert await services.store.numbers(new_job_id(), number_count=1) is None

    another, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=pack_numbers([2.0] * (CLAIM_NUMBERS_MAX + 1)),
    )
    await execute_job(services, another.id, delay=timedelta(0), deadline=timedelta(seconds=30))

    done = await services.store.get(another.id, tenant=None)
    assert done.status == JobStatus.SUCCESS
    assert done.outcome is not None
    assert done.outcome.result == 8.0 * (CLAIM_NUMBERS_MAX + 1)
    assert services.numbers_memory.held == 0


async def test_a_job_past_its_deadline_fails_as_timed_out(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([1.0]),
    )

    await execute_job(
        services, job.id, delay=timedelta(seconds=30), deadline=timedelta(seconds=0.3)
    )

    failed = await services.store.get(job.id, tenant=None)
    assert failed.status == JobStatus.FAILED
    assert failed.outcome is not None
    assert "timed out" in (failed.outcome.error or "")


async def test_cancelling_a_running_job_stops_it_promptly(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([1.0]),
    )
    running = asyncio.create_task(
        execute_job(services, job.id, delay=timedelta(seconds=60), deadline=timedelta(seconds=120))
    )
    await eventually(
        lambda: services.store.get(job.id, tenant=None),
        until=lambda j: j.status == JobStatus.IN_PROGRESS,
    )

    await services.store.cancel(job.id, by=TEST_OWNER)

    # The attempt notices the CANCELLED event and returns long before its 60 s delay.
    await asyncio.wait_for(running, timeout=10)
    cancelled = await services.store.get(job.id, tenant=None)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.attempts == 1


async def test_a_job_without_delay_waiting_for_its_numbers_stops_promptly_when_cancelled(
    services: WorkerServices,
) -> None:
    # With no delay a small job is computed at once and listens for nothing; a large one may
    # wait (here: for the memory its numbers need), so it still learns of a cancellation.
    job, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([1.0] * (CLAIM_NUMBERS_MAX + 1)),
    )
    async with services.numbers_memory.hold(1024):
        running = asyncio.create_task(
            execute_job(services, job.id, delay=timedelta(0), deadline=timedelta(seconds=120))
        )
        await eventually(
            lambda: services.store.get(job.id, tenant=None),
            until=lambda j: j.status == JobStatus.IN_PROGRESS,
        )

        await services.store.cancel(job.id, by=TEST_OWNER)

        await asyncio.wait_for(running, timeout=10)
    cancelled = await services.store.get(job.id, tenant=None)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.attempts == 1
    assert services.numbers_memory.held == 0


async def test_a_duplicate_delivery_of_a_running_job_does_nothing(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.SQUARE_SUM,
        numbers=pack_numbers([5.0]),
    )

    await asyncio.gather(
        execute_job(services, job.id, delay=timedelta(seconds=0.2), deadline=timedelta(seconds=30)),
        execute_job(services, job.id, delay=timedelta(seconds=0.2), deadline=timedelta(seconds=30)),
    )

    done = await services.store.get(job.id, tenant=None)
    assert done.status == JobStatus.SUCCESS
    assert done.attempts == 1
    assert [
        e.status for e in await services.store.events_after(job.id, 0, tenant=TEST_OWNER.tenant)
    ] == [
        JobStatus.PENDING,
        JobStatus.IN_PROGRESS,
        JobStatus.SUCCESS,
    ]


async def test_start_jobs_returns_once_its_jobs_are_claimed_never_above_capacity(
    services: WorkerServices,
) -> None:
    jobs = [
        (
            await services.store.create(
                owner=TEST_OWNER,
                job_id=new_job_id(),
                operation=Operation.SQUARE_SUM,
                numbers=pack_numbers([n]),
            )
        )[0]
        for n in range(CAPACITY + 2)
    ]

    await start_jobs(
        services,
        [Wakeup(job.id) for job in jobs],
        delay=timedelta(seconds=1),
        deadline=timedelta(seconds=30),
    )

    # Every job was claimed before the message would be acked; at most CAPACITY still run.
    statuses = [(await services.store.get(job.id, tenant=None)).status for job in jobs]
    assert JobStatus.PENDING not in statuses
    assert 0 < statuses.count(JobStatus.IN_PROGRESS) <= CAPACITY
    assert len(services.running) <= CAPACITY

    await services.drain(timeout_seconds=30)

    assert not services.running
    finished = [await services.store.get(job.id, tenant=None) for job in jobs]
    assert [job.status for job in finished] == [JobStatus.SUCCESS] * len(jobs)
    assert [job.outcome.result if job.outcome else None for job in finished] == [
        float(n * n) for n in range(len(jobs))
    ]


async def test_after_a_listener_reconnect_an_attempt_rereads_its_job_and_stops_only_if_it_changed(
    services: WorkerServices,
) -> None:
    """RESYNC (the listener reconnected, events may be lost): the job is read again; the attempt
    goes on while it still holds the job, and stops once it is cancelled or another attempt
    holds it."""
    store = services.store

    async def claimed() -> tuple[uuid.UUID, Claim]:
        job, _ = await store.create(
            owner=TEST_OWNER,
            job_id=new_job_id(),
            operation=Operation.SQUARE_SUM,
            numbers=pack_numbers([1.0]),
        )
        claim = await store.claim(job.id, lease=timedelta(seconds=30))
        assert claim is not None
        return job.id, claim

    async def after_resync(claim: Claim) -> str | None:
        """What the attempt's watch returns after one RESYNC; None if it keeps waiting."""
        inbox: asyncio.Queue[InboxItem] = asyncio.Queue()
        inbox.put_nowait(RESYNC)
        watch = asyncio.create_task(_until_taken_away(inbox, store, claim))
        done, _ = await asyncio.wait({watch}, timeout=2)
        watch.cancel()
        return watch.result() if done else None

    _, still_held = await claimed()
    cancelled_id, cancelled = await claimed()
    await store.cancel(cancelled_id, by=TEST_OWNER)
    taken_id, lost = await claimed()
    # The lease of `lost` runs out and another attempt of the same job takes it.
    assert await store.renew([lost], lease=timedelta(0)) == {(taken_id, lost.attempt)}
    await eventually(lambda: _requeued(store, taken_id), until=bool, timeout_seconds=10)
    assert await store.claim(taken_id, lease=timedelta(seconds=30)) is not None

    assert await after_resync(still_held) is None
    assert await after_resync(cancelled) == "CANCELLED"
    assert await after_resync(lost) == "IN_PROGRESS"


async def _requeued(store: JobStore, job_id: uuid.UUID) -> bool:
    await store.requeue_expired(max_attempts=10, limit=100)
    return (await store.get(job_id, tenant=None)).status == JobStatus.PENDING


async def test_a_result_beyond_the_largest_double_fails_the_job_with_a_readable_error(
    services: WorkerServices,
) -> None:
    job, _ = await services.store.create(
        owner=TEST_OWNER,
        job_id=new_job_id(),
        operation=Operation.CUBE_SUM,
        numbers=pack_numbers([1e300]),
    )

    await execute_job(services, job.id, delay=timedelta(0), deadline=timedelta(seconds=30))

    failed = await services.store.get(job.id, tenant=None)
    assert failed.status == JobStatus.FAILED
    assert failed.outcome is not None
    assert failed.outcome.error is not None
    assert "beyond the largest double" in failed.outcome.error
