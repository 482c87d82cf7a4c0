"""worker.execution in this process against the isolated database: claiming a message's jobs
within capacity, deadlines, prompt cancel, duplicates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from jobcore.celery_app import Wakeup
from jobcore.events import JobEventHub
from jobcore.ids import new_job_id
from jobcore.models import JobStatus
from jobcore.operations import Operation, pack_numbers
from jobcore.store import JobStore
from tests.eventually import eventually
from worker.execution import execute_job, start_jobs
from worker.leases import LeaseKeeper
from worker.runtime import WorkerServices

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
        capacity=asyncio.Semaphore(CAPACITY),
        running=set(),
    )
    await hub.stop()
    await store.close()


async def test_a_job_runs_to_success(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        job_id=new_job_id(), operation=Operation.CUBE_SUM, numbers=pack_numbers([2.0, 3.0])
    )

    await execute_job(services, job.id, delay=timedelta(0), deadline=timedelta(seconds=30))

    done = await services.store.get(job.id)
    assert done.status == JobStatus.SUCCESS
    assert done.outcome is not None
    assert done.outcome.result == 35.0


async def test_a_job_past_its_deadline_fails_as_timed_out(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([1.0])
    )

    await execute_job(
        services, job.id, delay=timedelta(seconds=30), deadline=timedelta(seconds=0.3)
    )

    failed = await services.store.get(job.id)
    assert failed.status == JobStatus.FAILED
    assert failed.outcome is not None
    assert "timed out" in (failed.outcome.error or "")


async def test_cancelling_a_running_job_stops_it_promptly(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([1.0])
    )
    running = asyncio.create_task(
        execute_job(services, job.id, delay=timedelta(seconds=60), deadline=timedelta(seconds=120))
    )
    await eventually(
        lambda: services.store.get(job.id), until=lambda j: j.status == JobStatus.IN_PROGRESS
    )

    await services.store.cancel(job.id)

    # The attempt notices the CANCELLED event and returns long before its 60 s delay.
    await asyncio.wait_for(running, timeout=10)
    cancelled = await services.store.get(job.id)
    assert cancelled.status == JobStatus.CANCELLED
    assert cancelled.attempts == 1


async def test_a_duplicate_delivery_of_a_running_job_does_nothing(services: WorkerServices) -> None:
    job, _ = await services.store.create(
        job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([5.0])
    )

    await asyncio.gather(
        execute_job(services, job.id, delay=timedelta(seconds=0.2), deadline=timedelta(seconds=30)),
        execute_job(services, job.id, delay=timedelta(seconds=0.2), deadline=timedelta(seconds=30)),
    )

    done = await services.store.get(job.id)
    assert done.status == JobStatus.SUCCESS
    assert done.attempts == 1
    assert [e.status for e in await services.store.events_after(job.id, 0)] == [
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
                job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([n])
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
    statuses = [(await services.store.get(job.id)).status for job in jobs]
    assert JobStatus.PENDING not in statuses
    assert 0 < statuses.count(JobStatus.IN_PROGRESS) <= CAPACITY
    assert len(services.running) <= CAPACITY

    await services.drain(timeout_seconds=30)

    assert not services.running
    finished = [await services.store.get(job.id) for job in jobs]
    assert [job.status for job in finished] == [JobStatus.SUCCESS] * len(jobs)
    assert [job.outcome.result if job.outcome else None for job in finished] == [
        float(n * n) for n in range(len(jobs))
    ]
