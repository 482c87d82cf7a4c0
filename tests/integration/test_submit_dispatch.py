"""A stored job always gets a wake-up: even when its caller went away, and again on a retry."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import grpc
import pytest
import redis.asyncio
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.celery_app import JOBS_QUEUE
from jobcore.database import asyncpg_dsn
from tests.eventually import eventually
from tests.redispatch import START_WITHIN, redispatch_after

SLOW_KEY_PREFIX = "slow-insert-"
INSERT_SECONDS = 1.0


@pytest.fixture
async def slow_inserts(stack: Stack) -> AsyncIterator[None]:
    """Storing a job whose idempotency key starts with SLOW_KEY_PREFIX takes INSERT_SECONDS.

    A real PostgreSQL trigger, so a caller's deadline can pass while its INSERT still commits.
    Created as the schema's owner: the application's role may not add triggers.
    """
    connection = await asyncpg.connect(asyncpg_dsn(stack.migration_database_url))
    try:
        await connection.execute(
            f"""
            CREATE FUNCTION test_slow_insert() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_sleep({INSERT_SECONDS}); RETURN NEW; END $$;
            CREATE TRIGGER test_slow_insert BEFORE INSERT ON jobs FOR EACH ROW
            WHEN (NEW.request_id LIKE '{SLOW_KEY_PREFIX}%') EXECUTE FUNCTION test_slow_insert();
            """
        )
        yield
    finally:
        await connection.execute(
            "DROP TRIGGER IF EXISTS test_slow_insert ON jobs;"
            "DROP FUNCTION IF EXISTS test_slow_insert();"
        )
        await connection.close()


async def _started(stub: pb_grpc.JobServiceAsyncStub, job_id: str) -> pb.Job:
    """The job once it left PENDING; fails well before the redispatch sweep could resend it."""
    return await eventually(
        lambda: stub.GetStatus(pb.GetStatusRequest(job_id=job_id)),
        until=lambda job: job.status != pb.PENDING,
        timeout_seconds=START_WITHIN.total_seconds(),
    )


@pytest.mark.usefixtures("slow_inserts")
async def test_submit_whose_deadline_passes_during_the_insert_is_dispatched(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    assert redispatch_after(stack) >= 3 * START_WITHIN
    request = pb.SubmitJobRequest(
        data=[1, 2], operation=pb.square_sum, request_id=f"{SLOW_KEY_PREFIX}{uuid.uuid4()}"
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs_stub.SubmitJob(request, timeout=INSERT_SECONDS / 5)
    retried = await jobs_stub.SubmitJob(request)

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await _started(jobs_stub, retried.id)).status in (pb.IN_PROGRESS, pb.SUCCESS)


async def test_idempotent_retry_of_a_pending_job_wakes_a_worker_again(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub, workers_stopped: None
) -> None:
    assert redispatch_after(stack) >= 3 * START_WITHIN
    request = pb.SubmitJobRequest(data=[3], operation=pb.cube_sum, request_id=str(uuid.uuid4()))
    job = await jobs_stub.SubmitJob(request)
    # The broker loses the wake-up (as a Redis restarted without persistence would).
    broker = redis.asyncio.Redis.from_url(stack.redis_url)
    try:
        await eventually(lambda: broker.llen(JOBS_QUEUE), until=lambda length: length > 0)
        await broker.delete(JOBS_QUEUE)
    finally:
        await broker.aclose()
    for worker in stack.workers:
        worker.start()

    retried = await jobs_stub.SubmitJob(request)

    assert retried.id == job.id
    assert retried.status == pb.PENDING
    assert (await _started(jobs_stub, job.id)).status in (pb.IN_PROGRESS, pb.SUCCESS)
