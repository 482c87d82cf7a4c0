"""SIGTERM drains: the server ends open watch streams with UNAVAILABLE; the worker finishes its jobs."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.eventually import eventually


async def _restart_server(stack: Stack) -> None:
    stack.server.start()
    await eventually(lambda: asyncio.to_thread(_serving, stack), until=bool, timeout_seconds=60)


def _serving(stack: Stack) -> bool:
    try:
        return stack.server_serving()
    except grpc.RpcError:
        return False


async def test_server_sigterm_ends_watch_streams_so_clients_can_resume(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    # Keep the job PENDING by watching one that can never be claimed: stop the workers first.
    for worker in stack.workers:
        worker.stop()
    try:
        job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[7], operation=pb.square_sum))
        stream = jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))
        first = await stream.read()
        assert isinstance(first, pb.WatchJobResponse)
        assert first.job.status == pb.PENDING

        stack.server.stop()  # SIGTERM, then waits for the process to exit

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await stream.read()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert stack.server.exit_code() == 0
    finally:
        for worker in stack.workers:
            worker.start()
        await _restart_server(stack)

    # The job survived the restart and the worker picks it up: a new watch sees it finish.
    updates = [u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job.id))]
    assert updates[-1].job.status == pb.SUCCESS
    assert updates[-1].job.result.result == 49.0


async def test_worker_sigterm_finishes_the_jobs_it_started(
    stack: Stack, jobs_stub: pb_grpc.JobServiceAsyncStub
) -> None:
    jobs = [
        await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[i], operation=pb.cube_sum))
        for i in range(1, 6)
    ]

    async def statuses() -> list[int]:
        return [
            (await jobs_stub.GetStatus(pb.GetStatusRequest(job_id=job.id))).status for job in jobs
        ]

    # Stop only once every job has been claimed, so each one is in flight at SIGTERM or done.
    await eventually(statuses, until=lambda seen: pb.PENDING not in seen)

    for worker in stack.workers:
        worker.stop()  # warm shutdown: running jobs complete before the process exits
    try:
        assert all(worker.exit_code() == 0 for worker in stack.workers)
        finals = [await jobs_stub.GetResult(pb.GetResultRequest(job_id=j.id)) for j in jobs]
    finally:
        for worker in stack.workers:
            worker.start()

    assert [job.status for job in finals] == [pb.SUCCESS] * 5
    assert [job.result.result for job in finals] == [1.0, 8.0, 27.0, 64.0, 125.0]
