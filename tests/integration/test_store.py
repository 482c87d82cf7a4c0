"""JobStore against the real PostgreSQL: claims, fencing, events and their notifications."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import pytest

from devstack.stack import Stack
from jobcore.events import asyncpg_dsn
from jobcore.ids import new_job_id
from jobcore.models import JobStatus, Outcome
from jobcore.operations import Operation, pack_numbers
from jobcore.schema import JOB_EVENTS_CHANNEL
from jobcore.store import JobStore, create_engine

LEASE = timedelta(minutes=5)


@pytest.fixture(scope="module")
async def store(stack: Stack) -> AsyncIterator[JobStore]:
    engine = create_engine(stack.database_url, pool_size=4)
    yield JobStore(engine)
    await engine.dispose()


async def test_only_one_of_two_concurrent_claims_wins(store: JobStore) -> None:
    job, _ = await store.create(
        job_id=new_job_id(), operation=Operation.CUBE_SUM, numbers=pack_numbers([2.0])
    )

    claims = await asyncio.gather(
        store.claim(job.id, lease=LEASE), store.claim(job.id, lease=LEASE)
    )

    winners = [claim for claim in claims if claim is not None]
    assert len(winners) == 1
    assert winners[0].attempt == 1
    assert (await store.get(job.id)).status == JobStatus.IN_PROGRESS


async def test_a_stale_attempt_cannot_overwrite_the_outcome(store: JobStore) -> None:
    job, _ = await store.create(
        job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([3.0])
    )
    claim = await store.claim(job.id, lease=LEASE)
    assert claim is not None

    assert await store.finish(claim, Outcome(result=9.0)) is True
    assert await store.finish(claim, Outcome(error="late duplicate")) is False

    finished = await store.get(job.id)
    assert finished.status == JobStatus.SUCCESS
    assert finished.outcome == Outcome(result=9.0, error=None)
    assert await store.claim(job.id, lease=LEASE) is None


async def test_every_change_is_an_event_and_a_notification_on_commit(
    store: JobStore, stack: Stack
) -> None:
    listener = await asyncpg.connect(asyncpg_dsn(stack.database_url))
    received: asyncio.Queue[dict[str, object]] = asyncio.Queue()
    await listener.add_listener(
        JOB_EVENTS_CHANNEL, lambda *args: received.put_nowait(json.loads(args[3]))
    )
    try:
        job, _ = await store.create(
            job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([1.0, 2.0])
        )
        claim = await store.claim(job.id, lease=LEASE)
        assert claim is not None
        await store.finish(claim, Outcome(result=5.0))

        notified: list[tuple[object, object, object]] = []
        while len(notified) < 3:
            payload = await asyncio.wait_for(received.get(), timeout=10)
            if payload["job_id"] == str(job.id):
                notified.append((payload["sequence"], payload["status"], payload["result"]))
    finally:
        await listener.close()

    events = await store.events_after(job.id, 0)
    assert [(e.sequence, e.status) for e in events] == [
        (1, JobStatus.PENDING),
        (2, JobStatus.IN_PROGRESS),
        (3, JobStatus.SUCCESS),
    ]
    assert events[-1].outcome == Outcome(result=5.0)
    assert notified == [(1, "PENDING", None), (2, "IN_PROGRESS", None), (3, "SUCCESS", 5.0)]
    assert (await store.get(job.id)).sequence == 3


async def test_jobs_whose_publish_failed_are_taken_for_redispatch_once(store: JobStore) -> None:
    job, _ = await store.create(
        job_id=new_job_id(), operation=Operation.SQUARE_SUM, numbers=pack_numbers([1.0])
    )
    await store.mark_undispatched([job.id])

    first = await store.take_undispatched(older_than=timedelta(hours=1), limit=1000)
    second = await store.take_undispatched(older_than=timedelta(hours=1), limit=1000)

    assert job.id in first
    assert job.id not in second
