"""Health follows PostgreSQL and the broker: NOT_SERVING (and REST 503) while one is down, SERVING once it is back."""

from __future__ import annotations

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.eventually import eventually


async def test_health_goes_not_serving_while_postgres_is_down(
    stack: Stack, grpc_channel: grpc.aio.Channel, http: httpx.AsyncClient
) -> None:
    assert stack.postgres is not None, "the suite runs against the embedded PostgreSQL"
    health = health_pb2_grpc.HealthStub(grpc_channel)
    request = health_pb2.HealthCheckRequest(service="jobs.v1.JobService")
    jobs = pb_grpc.JobServiceStub(grpc_channel)

    stack.postgres.stop()
    try:
        down = await eventually(
            lambda: health.Check(request),
            until=lambda reply: reply.status != health_pb2.HealthCheckResponse.SERVING,
        )
        assert down.status == health_pb2.HealthCheckResponse.NOT_SERVING
        rest = await eventually(lambda: http.get("/health"), until=lambda r: r.status_code != 200)
        assert rest.status_code == 503
        assert rest.json()["status"] == "NOT_SERVING"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await jobs.SubmitJob(pb.SubmitJobRequest(data=[1], operation=pb.square_sum))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        unavailable = await http.post(
            "/api/v1/jobs/", json={"data": [1], "operation": "square_sum"}
        )
        assert unavailable.status_code == 503
    finally:
        stack.postgres.start()

    up = await eventually(
        lambda: health.Check(request),
        until=lambda reply: reply.status == health_pb2.HealthCheckResponse.SERVING,
    )
    assert up.status == health_pb2.HealthCheckResponse.SERVING
    await eventually(lambda: http.get("/health"), until=lambda r: r.status_code == 200)
    # The service works again, watch notifications included.
    job = await jobs.SubmitJob(pb.SubmitJobRequest(data=[5], operation=pb.square_sum))
    updates = [u async for u in jobs.WatchJob(pb.WatchJobRequest(job_id=job.id))]
    assert updates[-1].job.result.result == 25.0


async def test_health_goes_not_serving_while_the_broker_is_down(
    stack: Stack, grpc_channel: grpc.aio.Channel
) -> None:
    assert stack.redis is not None, "the suite runs against the embedded Redis"
    health = health_pb2_grpc.HealthStub(grpc_channel)
    request = health_pb2.HealthCheckRequest(service="jobs.v1.JobService")
    jobs = pb_grpc.JobServiceStub(grpc_channel)

    stack.redis.stop()
    try:
        down = await eventually(
            lambda: health.Check(request),
            until=lambda reply: reply.status != health_pb2.HealthCheckResponse.SERVING,
        )
        assert down.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        stack.redis.start()

    up = await eventually(
        lambda: health.Check(request),
        until=lambda reply: reply.status == health_pb2.HealthCheckResponse.SERVING,
    )
    assert up.status == health_pb2.HealthCheckResponse.SERVING
    # Workers reconnect (or are restarted) and jobs run again.
    job = await jobs.SubmitJob(pb.SubmitJobRequest(data=[6], operation=pb.square_sum))
    updates = [u async for u in jobs.WatchJob(pb.WatchJobRequest(job_id=job.id))]
    assert updates[-1].job.result.result == 36.0
