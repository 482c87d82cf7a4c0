"""A backlog stays cheap: sweeps do not multiply wake-ups, and lost wake-ups are still re-sent.

The stack here sweeps every 0.5 s and calls a wake-up stale after 1 s, so a few seconds
cover as many redispatch periods as hours of the defaults (a sweep every 5 s, stale
after 60 s). Its jobs take no simulated time, so 50,000 of them finish quickly.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.celery_app import QUEUE_KEYS
from jobcore.store import JobStore
from tests.conftest import own_stack_config, stack_data_dir
from tests.credentials import aio_channel
from tests.eventually import eventually
from tests.faults.harness import LoadRecord, audit, submit_grpc

pytestmark = pytest.mark.timeout(300)

MAINTENANCE_INTERVAL_SECONDS = 0.5
REDISPATCH_AFTER_SECONDS = 1.0
BACKLOG_JOBS = 50_000
# How long the backlog waits with no worker: 40 sweeps, 20 redispatch periods.
BACKLOG_WAIT_SECONDS = 20.0
# SubmitJob calls in flight, spread over a few HTTP/2 connections.
SUBMITTERS = 256
CHANNELS = 4


@pytest.fixture(scope="module")
def backlog_stack() -> Iterator[Stack]:
    """The service with fast sweeps, no simulated delay and one worker."""
    with stack_data_dir("backlog") as data_dir:
        config = own_stack_config(
            data_dir,
            env={
                "SIMULATED_DELAY_SECONDS": "0",
                "WORKER_CONCURRENCY": "200",
                "MAINTENANCE_INTERVAL_SECONDS": str(MAINTENANCE_INTERVAL_SECONDS),
                "REDISPATCH_AFTER_SECONDS": str(REDISPATCH_AFTER_SECONDS),
                "HEALTH_CHECK_INTERVAL_SECONDS": "0.5",
            },
        )
        with Stack(config) as stack:
            yield stack


@pytest.fixture
def no_workers(backlog_stack: Stack) -> Iterator[None]:
    """Workers stopped for the test's first part; started again at its end if it did not."""
    for worker in backlog_stack.workers:
        worker.stop()
    try:
        yield
    finally:
        start_workers(backlog_stack)


def start_workers(stack: Stack) -> None:
    """Start every stopped worker."""
    for worker in stack.workers:
        if not worker.is_running():
            worker.start()


@pytest.fixture
async def broker(backlog_stack: Stack) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of the stack's broker, to read (and, for a lost message, empty) the jobs queue."""
    client = redis.asyncio.Redis.from_url(backlog_stack.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


async def queue_length(broker: redis.asyncio.Redis) -> int:
    """Wake-up messages waiting in the broker, on the lists of every priority."""
    async with broker.pipeline(transaction=False) as pipe:
        for key in QUEUE_KEYS:
            pipe.llen(key)
        lengths = await pipe.execute()
    return sum(int(length) for length in lengths)


async def submit_jobs(stack: Stack, record: LoadRecord, *, count: int) -> None:
    """Submit `count` jobs through SubmitJob, `SUBMITTERS` at a time, each with its idempotency key."""
    channels = [aio_channel(stack.grpc_target, stack.api_key) for _ in range(CHANNELS)]
    stubs = [pb_grpc.JobServiceStub(channel) for channel in channels]
    rng = random.Random(11)
    tickets = iter(range(count))

    async def submitter(stub: pb_grpc.JobServiceAsyncStub) -> None:
        for _ in tickets:
            await submit_grpc(stub, record, rng)

    try:
        await asyncio.gather(*(submitter(stubs[n % CHANNELS]) for n in range(SUBMITTERS)))
    finally:
        for channel in channels:
            await channel.close()


async def settled_length(broker: redis.asyncio.Redis) -> int:
    """The queue's length once the server has published what it had queued."""
    previous = -1
    for _ in range(20):
        length = await queue_length(broker)
        if length == previous:
            return length
        previous = length
        await asyncio.sleep(0.25)
    return previous


@pytest.mark.usefixtures("no_workers")
async def test_a_backlog_does_not_grow_the_broker_queue_and_every_job_finishes_once(
    backlog_stack: Stack, broker: redis.asyncio.Redis
) -> None:
    """50,000 PENDING jobs wait for 40 sweeps (20 redispatch periods) with no worker.

    Each wake-up is already queued, so the sweeps must add none: the queue's length
    stays where publishing left it. A job whose publish failed (dispatched_at NULL)
    is still sent at the next sweep. Then one worker takes them all, each exactly once.
    """
    record = LoadRecord()
    await submit_jobs(backlog_stack, record, count=BACKLOG_JOBS)
    assert len(record.acknowledged) == BACKLOG_JOBS
    published = await settled_length(broker)
    assert published > 0

    lengths = []
    end = time.monotonic() + BACKLOG_WAIT_SECONDS
    while time.monotonic() < end:
        lengths.append(await queue_length(broker))
        await asyncio.sleep(MAINTENANCE_INTERVAL_SECONDS)
    assert max(lengths) <= published, (
        f"sweeps added wake-ups to a queued backlog: {published} messages after publishing, "
        f"then {lengths}"
    )

    # As if publishing these had failed: the next sweep sends them although others wait.
    failed = [uuid.UUID(submitted.job_id) for submitted in record.acknowledged[:150]]
    store = await JobStore.connect(backlog_stack.database_url, pool_size=1)
    try:
        await store.mark_undispatched(failed)
    finally:
        await store.close()
    await eventually(
        lambda: queue_length(broker), until=lambda length: length > published, timeout_seconds=10
    )

    start_workers(backlog_stack)
    result = await audit(backlog_stack.database_url, record, settle_seconds=150)
    result.assert_clean()
    assert result.acknowledged == BACKLOG_JOBS
    # Nothing was lost or killed, so every job ran once, at its first attempt.
    assert result.max_attempts == 1, result
    await eventually(lambda: queue_length(broker), until=lambda length: length == 0)


@pytest.mark.usefixtures("no_workers")
async def test_wakeups_the_broker_lost_are_sent_again(
    backlog_stack: Stack, broker: redis.asyncio.Redis
) -> None:
    """Jobs whose messages vanished (Redis restarted empty) run once the queue is found empty."""
    record = LoadRecord()
    await submit_jobs(backlog_stack, record, count=300)
    await eventually(lambda: queue_length(broker), until=lambda length: length > 0)
    await broker.delete(*QUEUE_KEYS)

    start_workers(backlog_stack)
    result = await audit(backlog_stack.database_url, record, settle_seconds=30)
    result.assert_clean()
    assert result.acknowledged == 300
