"""Break real processes while load runs, then audit every acknowledged job."""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from jobcore.celery_app import Wakeup, create_celery_app
from jobcore.settings import Settings
from jobcore.wakeup_publisher import WakeupPublisher
from tests.credentials import aio_channel
from tests.faults.harness import (
    Audit,
    LoadRecord,
    Submitted,
    audit,
    run_load,
    submit_grpc,
    submit_rest,
    watch_grpc,
    watch_sse,
)

Report = dict[str, tuple[str, float, Audit]]

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def direct(fault_stack: Stack) -> AsyncIterator[pb_grpc.JobServiceAsyncStub]:
    async with aio_channel(fault_stack.grpc_target, fault_stack.api_key) as channel:
        yield pb_grpc.JobServiceStub(channel)


@pytest.fixture
async def rest(fault_stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(
        base_url=fault_stack.http_base,
        headers=fault_stack.auth_headers(),
        timeout=30,
        limits=limits,
    ) as client:
        yield client


async def _fault_during(
    load: Awaitable[object], fault: Callable[[], Awaitable[None]], *, after_seconds: float
) -> float:
    """Run `fault` `after_seconds` into the load; return how long the fault lasted."""
    load_task = asyncio.ensure_future(load)
    await asyncio.sleep(after_seconds)
    started = time.monotonic()
    await fault()
    lasted = time.monotonic() - started
    await load_task
    return lasted


def _watcher(
    stub: pb_grpc.JobServiceAsyncStub, record: LoadRecord
) -> Callable[[Submitted], Awaitable[None]]:
    async def watch(submitted: Submitted) -> None:
        seen = record.watched.setdefault(submitted.job_id, [])
        await watch_grpc(stub, submitted.job_id, seen)

    return watch


async def test_worker_killed_mid_job_repeatedly(
    fault_stack: Stack, direct: pb_grpc.JobServiceAsyncStub, reliability_report: Report
) -> None:
    record, rng = LoadRecord(), random.Random(1)

    async def kill_workers() -> None:
        for round_ in range(4):
            worker = fault_stack.workers[round_ % 2]
            worker.send(signal.SIGKILL)  # mid-job: every worker holds ~2 s jobs in flight
            worker.stop()
            worker.start()
            await asyncio.sleep(2.5)

    lasted = await _fault_during(
        run_load(lambda: submit_grpc(direct, record, rng), rate_per_second=25, duration_seconds=12),
        kill_workers,
        after_seconds=2.5,
    )

    result = await audit(fault_stack.database_url, record)
    reliability_report["1. worker SIGKILL"] = (
        "SIGKILL a worker mid-job 4 times (alternating between 2), restart it",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.rerun_jobs > 0, "expected some jobs to run again after their worker died"


async def test_redis_down_for_ten_seconds(
    fault_stack: Stack, direct: pb_grpc.JobServiceAsyncStub, reliability_report: Report
) -> None:
    assert fault_stack.redis is not None
    redis = fault_stack.redis
    record, rng = LoadRecord(), random.Random(2)

    async def redis_outage() -> None:
        redis.stop()
        await asyncio.sleep(10)
        redis.start()

    lasted = await _fault_during(
        run_load(lambda: submit_grpc(direct, record, rng), rate_per_second=20, duration_seconds=18),
        redis_outage,
        after_seconds=3,
    )

    result = await audit(fault_stack.database_url, record)
    reliability_report["2. Redis down"] = ("stop Redis for 10 s, start it again", lasted, result)
    result.assert_clean()


async def test_postgres_restart_while_submitting_and_watching(
    fault_stack: Stack, direct: pb_grpc.JobServiceAsyncStub, reliability_report: Report
) -> None:
    assert fault_stack.postgres is not None
    postgres = fault_stack.postgres
    record, rng = LoadRecord(), random.Random(3)

    async def restart() -> None:
        await asyncio.to_thread(postgres.stop)
        await asyncio.to_thread(postgres.start)

    lasted = await _fault_during(
        run_load(
            lambda: submit_grpc(direct, record, rng),
            rate_per_second=20,
            duration_seconds=10,
            watch=_watcher(direct, record),
        ),
        restart,
        after_seconds=3,
    )

    result = await audit(fault_stack.database_url, record)
    reliability_report["3. PostgreSQL restart"] = (
        "restart PostgreSQL while clients submit and watch every job",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.watched == result.acknowledged


async def test_server_restart_with_a_hundred_watchers(
    fault_stack: Stack, direct: pb_grpc.JobServiceAsyncStub, reliability_report: Report
) -> None:
    record, rng = LoadRecord(), random.Random(4)

    async def restart() -> None:
        await asyncio.to_thread(fault_stack.server.stop)
        await asyncio.to_thread(fault_stack.start_server)

    # 100 jobs submitted at once (a fixed count, however slow the machine), each watched,
    # then more load while the server restarts.
    watch = _watcher(direct, record)

    async def submit_and_watch() -> None:
        submitted = await submit_grpc(direct, record, rng)
        if submitted is not None:
            await watch(submitted)

    first = asyncio.gather(*(submit_and_watch() for _ in range(100)))
    more = run_load(
        lambda: submit_grpc(direct, record, rng),
        rate_per_second=10,
        duration_seconds=6,
        watch=_watcher(direct, record),
    )
    lasted = await _fault_during(asyncio.gather(first, more), restart, after_seconds=1)

    result = await audit(fault_stack.database_url, record)
    reliability_report["4. gRPC server restart"] = (
        "SIGTERM and restart the server while 100+ clients watch; they resume",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.watched >= 100


async def test_envoy_restart_while_rest_clients_submit_and_watch(
    fault_stack: Stack, rest: httpx.AsyncClient, reliability_report: Report
) -> None:
    record, rng = LoadRecord(), random.Random(5)

    async def watch(submitted: Submitted) -> None:
        seen = record.watched.setdefault(submitted.job_id, [])
        await watch_sse(rest, submitted.job_id, seen)

    async def restart() -> None:
        await asyncio.to_thread(fault_stack.envoy.stop)
        await asyncio.to_thread(fault_stack.start_envoy)

    lasted = await _fault_during(
        run_load(
            lambda: submit_rest(rest, record, rng),
            rate_per_second=15,
            duration_seconds=8,
            watch=watch,
        ),
        restart,
        after_seconds=3,
    )

    result = await audit(fault_stack.database_url, record)
    reliability_report["5. Envoy restart"] = (
        "restart Envoy while REST clients submit (Idempotency-Key) and watch (SSE, Last-Event-ID)",
        lasted,
        result,
    )
    result.assert_clean()


async def test_duplicate_deliveries_record_one_outcome(
    fault_stack: Stack, direct: pb_grpc.JobServiceAsyncStub, reliability_report: Report
) -> None:
    record, rng = LoadRecord(), random.Random(6)
    settings = Settings(redis_url=fault_stack.redis_url)
    publisher = WakeupPublisher(create_celery_app(settings), settings.broker_url)
    for worker in fault_stack.workers:
        worker.stop()
    started = time.monotonic()
    try:
        for _ in range(60):
            await submit_grpc(direct, record, rng)
        # Two more messages per job: with both workers back, each job is delivered three
        # times, usually to both workers at once.
        for submitted in record.acknowledged:
            for _ in range(2):
                await publisher.publish([Wakeup(uuid.UUID(submitted.job_id))])
    finally:
        await publisher.close()
        for worker in fault_stack.workers:
            worker.start()
    lasted = time.monotonic() - started

    result = await audit(fault_stack.database_url, record)
    reliability_report["6. duplicate delivery"] = (
        "deliver each of 60 jobs 3 times to 2 workers",
        lasted,
        result,
    )
    result.assert_clean()
    assert result.max_attempts == 1
