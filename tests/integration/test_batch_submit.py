"""BatchSubmitJobs over native gRPC, straight to the server, against real services: answered in
order, validated and stored all or nothing, idempotent per request, within the tenant's quota."""

from __future__ import annotations

import asyncio
import json
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from server.submit_wire import MAX_BATCH_REQUESTS
from tests.conftest import second_server
from tests.credentials import auth_metadata
from tests.eventually import eventually
from tests.status_details import field_violations

# Tenants of their own per test run, so what a test counts is only its own.
_RUN = uuid.uuid4().hex[:8]


def _batch(*requests: pb.SubmitJobRequest) -> pb.BatchSubmitJobsRequest:
    return pb.BatchSubmitJobsRequest(requests=requests)


def _square_sums(count: int, *, keys: str | None = None) -> pb.BatchSubmitJobsRequest:
    """`count` square sums of [i], each with the key `{keys}-{i}` if given."""
    return _batch(
        *(
            pb.SubmitJobRequest(
                data=[float(index)],
                operation=pb.square_sum,
                request_id=f"{keys}-{index}" if keys else "",
            )
            for index in range(count)
        )
    )


async def _finished(stub: pb_grpc.JobServiceAsyncStub, job_id: str) -> pb.Job:
    return await eventually(
        lambda: stub.GetResult(pb.GetResultRequest(job_id=job_id)),
        until=lambda job: job.status in (pb.SUCCESS, pb.FAILED),
    )


async def _tenant_key(stack: Stack, channel: grpc.aio.Channel, tenant: str) -> str:
    """A jobs.write key of `tenant`, made through AdminService with the stack's admin key."""
    created = await pb_grpc.AdminServiceStub(channel).CreateApiKey(
        pb.CreateApiKeyRequest(tenant=tenant, scopes=["jobs.write"], name="batch tests"),
        metadata=auth_metadata(stack.api_key),
    )
    return created.key


async def _tenant_jobs(stub: pb_grpc.JobServiceAsyncStub, key: str) -> list[pb.Job]:
    page = await stub.ListJobs(pb.ListJobsRequest(page_size=1000), metadata=auth_metadata(key))
    return list(page.jobs)


@pytest.fixture
async def fresh_tenant(
    stack: Stack, grpc_channel: grpc.aio.Channel
) -> tuple[pb_grpc.JobServiceAsyncStub, str]:
    """A stub and the key of a tenant that has no job yet."""
    key = await _tenant_key(stack, grpc_channel, f"batch-{_RUN}-{uuid.uuid4().hex[:6]}")
    return pb_grpc.JobServiceStub(grpc_channel), key


async def test_jobs_come_back_in_request_order_and_each_runs_to_success(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    count = 60
    batch = _batch(
        *(
            pb.SubmitJobRequest(
                data=[float(index), 1.0],
                operation=pb.cube_sum if index % 2 else pb.square_sum,
            )
            for index in range(count)
        )
    )

    response = await jobs_stub.BatchSubmitJobs(batch)

    assert len(response.jobs) == count
    assert len({job.id for job in response.jobs}) == count
    assert all(job.status == pb.PENDING for job in response.jobs)
    assert [job.operation for job in response.jobs] == [r.operation for r in batch.requests]
    finished = await asyncio.gather(*(_finished(jobs_stub, job.id) for job in response.jobs))
    # Each job computed its own request's numbers: i**2 + 1 or i**3 + 1.
    assert [job.result.result for job in finished] == [
        float(index ** (3 if index % 2 else 2) + 1) for index in range(count)
    ]
    assert all(job.status == pb.SUCCESS for job in finished)


async def test_one_bad_request_refuses_the_batch_naming_every_violation(
    fresh_tenant: tuple[pb_grpc.JobServiceAsyncStub, str],
) -> None:
    stub, key = fresh_tenant
    requests = [
        pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum, request_id=f"{_RUN}-{index}")
        for index in range(8)
    ]
    requests[0].request_id = "x" * 129
    requests[3].operation = pb.OPERATION_UNSPECIFIED
    requests[7].data[:] = [1.0, 2.0, float("nan")]

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.BatchSubmitJobs(_batch(*requests), metadata=auth_metadata(key))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    assert set(violations) == {
        "requests[0].request_id",
        "requests[3].operation",
        "requests[7].data[2]",
    }
    assert "nan" in violations["requests[7].data[2]"]
    assert await _tenant_jobs(stub, key) == []


async def test_a_retried_batch_gets_the_same_jobs_and_stores_nothing_more(
    fresh_tenant: tuple[pb_grpc.JobServiceAsyncStub, str],
) -> None:
    stub, key = fresh_tenant
    batch = _square_sums(20, keys=f"retry-{_RUN}")

    first = await stub.BatchSubmitJobs(batch, metadata=auth_metadata(key))
    again = await stub.BatchSubmitJobs(batch, metadata=auth_metadata(key))

    assert [job.id for job in again.jobs] == [job.id for job in first.jobs]
    assert len(await _tenant_jobs(stub, key)) == 20
    # A key of the batch used by SubmitJob means the same job too, and the other way round.
    alone = await stub.SubmitJob(batch.requests[4], metadata=auth_metadata(key))
    assert alone.id == first.jobs[4].id


async def test_a_key_used_for_another_request_refuses_the_whole_batch(
    fresh_tenant: tuple[pb_grpc.JobServiceAsyncStub, str],
) -> None:
    stub, key = fresh_tenant
    used = await stub.SubmitJob(
        pb.SubmitJobRequest(data=[5.0], operation=pb.square_sum, request_id=f"taken-{_RUN}-2"),
        metadata=auth_metadata(key),
    )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.BatchSubmitJobs(
            _square_sums(5, keys=f"taken-{_RUN}"), metadata=auth_metadata(key)
        )

    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert f"taken-{_RUN}-2" in (refused.value.details() or "")
    assert [job.id for job in await _tenant_jobs(stub, key)] == [used.id]


async def test_a_key_twice_in_one_batch_is_one_job_or_a_violation_naming_both(
    fresh_tenant: tuple[pb_grpc.JobServiceAsyncStub, str],
) -> None:
    stub, key = fresh_tenant
    same = pb.SubmitJobRequest(data=[2.0, 3.0], operation=pb.cube_sum, request_id=f"twice-{_RUN}")
    other = pb.SubmitJobRequest(data=[1.0], operation=pb.cube_sum)

    response = await stub.BatchSubmitJobs(_batch(same, other, same), metadata=auth_metadata(key))
    different = pb.SubmitJobRequest(data=[4.0], operation=pb.cube_sum, request_id=same.request_id)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.BatchSubmitJobs(_batch(other, same, different), metadata=auth_metadata(key))

    assert response.jobs[0].id == response.jobs[2].id != response.jobs[1].id
    assert len(await _tenant_jobs(stub, key)) == 2
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    assert list(violations) == ["requests[2].request_id"]
    assert "requests[1]" in violations["requests[2].request_id"]


@pytest.mark.parametrize("count", [0, MAX_BATCH_REQUESTS + 1])
async def test_a_batch_holds_one_to_a_thousand_requests(
    jobs_stub: pb_grpc.JobServiceAsyncStub, count: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs_stub.BatchSubmitJobs(_square_sums(count))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert list(field_violations(refused.value)) == ["requests"]


async def test_a_thousand_requests_are_one_call(
    fresh_tenant: tuple[pb_grpc.JobServiceAsyncStub, str],
) -> None:
    stub, key = fresh_tenant

    response = await stub.BatchSubmitJobs(
        _square_sums(MAX_BATCH_REQUESTS, keys=f"full-{_RUN}"), metadata=auth_metadata(key)
    )

    assert len({job.id for job in response.jobs}) == MAX_BATCH_REQUESTS


async def test_many_violations_are_listed_up_to_a_limit_and_counted(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    batch = _batch(*(pb.SubmitJobRequest(data=[float("inf")] * 7) for _ in range(500)))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await jobs_stub.BatchSubmitJobs(batch)

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(refused.value)
    # The first request's own, then the next request's, in order; the rest counted.
    assert list(violations)[:3] == [
        "requests[0].data[0]",
        "requests[0].data[1]",
        "requests[0].data[2]",
    ]
    assert "more violations" in violations["requests"]


async def test_the_whole_batch_must_fit_in_the_tenants_quota(
    stack: Stack, grpc_channel: grpc.aio.Channel, workers_stopped: None
) -> None:
    tenant = f"tiny-{_RUN}"
    key = await _tenant_key(stack, grpc_channel, tenant)
    quota = {"TENANT_MAX_UNFINISHED_JOBS": json.dumps({tenant: 5})}
    with second_server(stack, "batch-quota", env=quota) as small:
        async with grpc.aio.insecure_channel(small.grpc_target) as channel:
            stub = pb_grpc.JobServiceStub(channel)

            with pytest.raises(grpc.aio.AioRpcError) as too_many:
                await stub.BatchSubmitJobs(_square_sums(6), metadata=auth_metadata(key))
            stored_after_refusal = await _tenant_jobs(stub, key)
            fits = await stub.BatchSubmitJobs(_square_sums(5), metadata=auth_metadata(key))
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await stub.BatchSubmitJobs(_square_sums(1), metadata=auth_metadata(key))

    assert too_many.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(too_many.value)
    assert status is not None
    assert any(d.Is(error_details_pb2.QuotaFailure.DESCRIPTOR) for d in status.details)
    assert stored_after_refusal == []
    assert len(fits.jobs) == 5
    assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
