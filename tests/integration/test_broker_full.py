"""A full broker (Redis maxmemory reached, noeviction) refuses wake-ups, never submissions."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
import redis.asyncio
import redis.exceptions
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.celery_app import JOBS_QUEUE
from jobcore.database import asyncpg_dsn
from tests.eventually import eventually

FILLER_PREFIX = "test-broker-full-filler:"
FILLER_VALUE = "x" * 64 * 1024
FILLER_BYTES = 4 * 1024 * 1024
GRPC_SUBMITS = 20
REST_SUBMITS = 10


@pytest.fixture
async def broker(stack: Stack) -> AsyncIterator[redis.asyncio.Redis]:
    """An admin client of the stack's Redis: CONFIG is refused to the application's user."""
    client = redis.asyncio.Redis.from_url(stack.redis_admin_url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def full(broker: redis.asyncio.Redis) -> AsyncIterator[None]:
    """The broker at its maxmemory with noeviction, so it refuses every write, for the block.

    Afterwards the memory is always given back, so later tests see a normal broker.
    """
    saved = {str(k): str(v) for k, v in (await broker.config_get("maxmemory*")).items()}
    try:
        await broker.config_set("maxmemory-policy", "noeviction")
        for index in range(FILLER_BYTES // len(FILLER_VALUE)):
            await broker.set(f"{FILLER_PREFIX}{index}", FILLER_VALUE)
        # Below what the filler takes: the broker stays over its limit however small a write.
        used = (await broker.info("memory"))["used_memory"]
        await broker.config_set("maxmemory", used - FILLER_BYTES // 2)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            await broker.lpush(JOBS_QUEUE, "a wake-up")
        yield
    finally:
        fillers = [key async for key in broker.scan_iter(match=f"{FILLER_PREFIX}*")]
        if fillers:
            await broker.delete(*fillers)
        await broker.config_set("maxmemory", saved["maxmemory"])
        await broker.config_set("maxmemory-policy", saved["maxmemory-policy"])


async def _jobs(database_url: str, job_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Each job's status, whether its wake-up is marked unpublished, and its final events."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return await connection.fetch(
            """
            SELECT jobs.id, jobs.status, jobs.result, jobs.attempt,
                   jobs.dispatched_at IS NULL AS undispatched,
                   (SELECT count(*) FROM job_events
                     WHERE job_events.job_id = jobs.id
                       AND job_events.status IN ('SUCCESS', 'FAILED', 'CANCELLED')) AS endings
              FROM jobs
             WHERE jobs.id = ANY($1::uuid[])
            """,
            job_ids,
        )
    finally:
        await connection.close()


async def test_submits_answer_ok_while_the_broker_is_full_and_every_job_finishes_once(
    stack: Stack,
    jobs_stub: pb_grpc.JobServiceAsyncStub,
    http: httpx.AsyncClient,
    broker: redis.asyncio.Redis,
) -> None:
    async with full(broker):
        grpc_jobs = await asyncio.gather(
            *(
                jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[i], operation=pb.square_sum))
                for i in range(GRPC_SUBMITS)
            )
        )
        rest_responses = await asyncio.gather(
            *(
                http.post("/api/v1/jobs", json={"data": [i], "operation": "cube_sum"})
                for i in range(REST_SUBMITS)
            )
        )
        assert [r.status_code for r in rest_responses] == [201] * REST_SUBMITS, [
            r.text for r in rest_responses
        ]
        assert all(job.status == pb.PENDING for job in grpc_jobs)
        job_ids = [uuid.UUID(job.id) for job in grpc_jobs] + [
            uuid.UUID(r.json()["id"]) for r in rest_responses
        ]
        # The dispatcher's publish failed and handed the jobs back for the sweep to resend.
        stuck = await eventually(
            lambda: _jobs(stack.database_url, job_ids),
            until=lambda rows: (
                len(rows) == len(job_ids) and all(row["undispatched"] for row in rows)
            ),
        )
        assert all(row["status"] == "PENDING" for row in stuck)

    finished = await eventually(
        lambda: _jobs(stack.database_url, job_ids),
        until=lambda rows: all(row["status"] == "SUCCESS" for row in rows),
    )
    expected = {uuid.UUID(job.id): float(i * i) for i, job in enumerate(grpc_jobs)} | {
        uuid.UUID(r.json()["id"]): float(i**3) for i, r in enumerate(rest_responses)
    }
    assert {row["id"]: row["result"] for row in finished} == expected
    assert all((row["endings"], row["attempt"]) == (1, 1) for row in finished), finished
