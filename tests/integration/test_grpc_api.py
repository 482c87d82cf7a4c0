"""Every JobService RPC over native gRPC, straight to the server, against real services."""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from tests.conftest import TEST_MAX_JOB_NUMBERS
from tests.eventually import eventually


async def _finished(stub: pb_grpc.JobServiceAsyncStub, job_id: str) -> pb.Job:
    return await eventually(
        lambda: stub.GetResult(pb.GetResultRequest(job_id=job_id)),
        until=lambda job: job.status in (pb.SUCCESS, pb.FAILED),
    )


def _details(
    error: grpc.aio.AioRpcError,
) -> tuple[list[error_details_pb2.ErrorInfo], dict[str, str]]:
    """The ErrorInfo details and the BadRequest field violations (field -> description)."""
    status = rpc_status.from_call(error)
    assert status is not None, "expected google.rpc.Status details"
    infos: list[error_details_pb2.ErrorInfo] = []
    violations: dict[str, str] = {}
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            infos.append(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations.update({v.field: v.description for v in bad_request.field_violations})
    return infos, violations


async def test_submit_stores_a_pending_job_with_a_uuid7_id(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    job = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[1, 2, 3], operation=pb.square_sum))

    assert job.status == pb.PENDING
    assert job.operation == pb.square_sum
    assert uuid.UUID(job.id).version == 7
    assert job.created_at == job.updated_at
    assert not job.HasField("result")


@pytest.mark.parametrize(
    ("operation", "data", "expected"),
    [
        (pb.square_sum, [1, 2, 3, 4, 5], 55.0),
        (pb.cube_sum, [1, 2, 3, 4, 5], 225.0),
        # Cancellation that naive float summation gets wrong.
        (pb.cube_sum, [1e6, -1e6, 1], 1.0),
        # Correctly rounded from the exact value (naive float arithmetic gives 0.05000000000000001).
        (pb.square_sum, [0.1, 0.2], 0.05),
    ],
)
async def test_job_runs_to_success_with_the_exact_result(
    jobs_stub: pb_grpc.JobServiceAsyncStub, operation: int, data: list[float], expected: float
) -> None:
    submitted = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=data, operation=operation))  # type: ignore[arg-type]

    job = await _finished(jobs_stub, submitted.id)

    assert job.status == pb.SUCCESS
    assert job.result.result == expected
    assert not job.result.HasField("error")
    assert job.updated_at.ToDatetime() > job.created_at.ToDatetime()


async def test_overflowing_result_fails_the_job_with_a_readable_error(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    submitted = await jobs_stub.SubmitJob(
        pb.SubmitJobRequest(data=[1e300, 1e300], operation=pb.square_sum)
    )

    job = await _finished(jobs_stub, submitted.id)

    assert job.status == pb.FAILED
    assert not job.result.HasField("result")
    assert "double" in job.result.error


async def test_status_and_result_before_the_job_finishes(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    submitted = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[2], operation=pb.cube_sum))

    status = await jobs_stub.GetStatus(pb.GetStatusRequest(job_id=submitted.id))
    early = await jobs_stub.GetResult(pb.GetResultRequest(job_id=submitted.id))

    assert status.id == submitted.id
    assert status.status in (pb.PENDING, pb.IN_PROGRESS)
    assert early.status in (pb.PENDING, pb.IN_PROGRESS)
    assert not early.HasField("result")
    running = await eventually(
        lambda: jobs_stub.GetStatus(pb.GetStatusRequest(job_id=submitted.id)),
        until=lambda job: job.status != pb.PENDING,
    )
    assert not running.HasField("result")  # GetStatus never carries the result
    assert (await _finished(jobs_stub, submitted.id)).result.result == 8.0


async def test_watch_streams_every_state_in_order_and_ends(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    submitted = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[3, 4], operation=pb.square_sum))

    updates = [u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=submitted.id))]

    # Subscribing may race the worker, so the first state seen may already be IN_PROGRESS,
    # but nothing is skipped after it and the stream ends after the final state.
    _assert_heartbeats_repeat_the_state_before(updates)
    changes = [u for u in updates if not u.heartbeat]
    statuses = [u.job.status for u in changes]
    assert statuses in ([pb.PENDING, pb.IN_PROGRESS, pb.SUCCESS], [pb.IN_PROGRESS, pb.SUCCESS])
    sequences = [u.sequence for u in changes]
    assert sequences == list(range(sequences[0], 4))
    assert updates[-1].job.result.result == 25.0
    assert all(not u.job.HasField("result") for u in updates[:-1])


def _assert_heartbeats_repeat_the_state_before(updates: list[pb.WatchJobResponse]) -> None:
    """A heartbeat (which may come at any time, the first one early) is never a change."""
    assert not updates[0].heartbeat
    for before, beat in itertools.pairwise(updates):
        if beat.heartbeat:
            assert (beat.sequence, beat.job.status) == (before.sequence, before.job.status)


async def test_watch_of_a_finished_job_sends_the_final_state_once(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    submitted = await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[1], operation=pb.square_sum))
    await _finished(jobs_stub, submitted.id)

    updates = [u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=submitted.id))]

    assert [(u.job.status, u.sequence) for u in updates] == [(pb.SUCCESS, 3)]
    assert updates[0].job.result.result == 1.0


async def test_many_watchers_of_many_jobs_all_see_every_change(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
) -> None:
    jobs = [
        await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[i], operation=pb.square_sum))
        for i in range(1, 11)
    ]

    async def watch(job_id: str) -> list[pb.WatchJobResponse]:
        return [u async for u in jobs_stub.WatchJob(pb.WatchJobRequest(job_id=job_id))]

    streams = await asyncio.gather(*(watch(job.id) for job in jobs for _ in range(10)))

    for index, updates in enumerate(streams):
        expected = float((index // 10 + 1) ** 2)
        assert updates[-1].job.status == pb.SUCCESS
        assert updates[-1].job.result.result == expected
        assert updates[-1].sequence == 3
        _assert_heartbeats_repeat_the_state_before(updates)
        changes = [u.sequence for u in updates if not u.heartbeat]
        assert changes == list(range(updates[0].sequence, 4))


async def test_one_worker_keeps_many_jobs_in_flight(jobs_stub: pb_grpc.JobServiceAsyncStub) -> None:
    jobs = await asyncio.gather(
        *(
            jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[i], operation=pb.square_sum))
            for i in range(20)
        )
    )
    in_progress_at_once = 0

    async def count_in_progress() -> int:
        nonlocal in_progress_at_once
        statuses = await asyncio.gather(
            *(jobs_stub.GetStatus(pb.GetStatusRequest(job_id=job.id)) for job in jobs)
        )
        running = sum(1 for s in statuses if s.status == pb.IN_PROGRESS)
        in_progress_at_once = max(in_progress_at_once, running)
        return sum(1 for s in statuses if s.status == pb.SUCCESS)

    await eventually(count_in_progress, until=lambda done: done == len(jobs))

    # With a single worker process, jobs overlap in their delay rather than queueing.
    assert in_progress_at_once > 1


@pytest.mark.parametrize(
    ("request_fields", "field", "fragment"),
    [
        ({"data": [], "operation": pb.square_sum}, "data", "at least one"),
        ({"data": [1.0, math.nan], "operation": pb.square_sum}, "data[1]", "finite"),
        ({"data": [math.inf], "operation": pb.cube_sum}, "data[0]", "finite"),
        (
            {"data": [1.0] * (TEST_MAX_JOB_NUMBERS + 1), "operation": pb.cube_sum},
            "data",
            str(TEST_MAX_JOB_NUMBERS),
        ),
        ({"data": [1.0]}, "operation", "square_sum, cube_sum"),
        ({"data": [1.0], "operation": 7}, "operation", "square_sum, cube_sum"),
    ],
)
async def test_invalid_submissions_are_rejected_naming_the_field(
    jobs_stub: pb_grpc.JobServiceAsyncStub,
    request_fields: dict[str, object],
    field: str,
    fragment: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs_stub.SubmitJob(pb.SubmitJobRequest(**request_fields))  # type: ignore[arg-type]

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    infos, violations = _details(raised.value)
    assert [info.reason for info in infos] == ["INVALID_REQUEST"]
    assert fragment in violations[field]
    assert field in (raised.value.details() or "")


async def test_all_violations_are_reported_together(jobs_stub: pb_grpc.JobServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs_stub.SubmitJob(pb.SubmitJobRequest(data=[]))

    _, violations = _details(raised.value)
    assert set(violations) == {"data", "operation"}


@pytest.mark.parametrize("method", ["GetStatus", "GetResult", "WatchJob"])
async def test_unknown_job_is_not_found(
    jobs_stub: pb_grpc.JobServiceAsyncStub, method: str
) -> None:
    unknown = "01a20000-0000-7000-8000-000000000000"
    request_type = {"GetStatus": pb.GetStatusRequest, "GetResult": pb.GetResultRequest}.get(
        method, pb.WatchJobRequest
    )
    call = getattr(jobs_stub, method)(request_type(job_id=unknown))

    async def complete() -> object:
        return [u async for u in call] if method == "WatchJob" else await call

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await complete()

    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    infos, _ = _details(raised.value)
    assert infos[0].reason == "JOB_NOT_FOUND"
    assert infos[0].metadata["job_id"] == unknown


@pytest.mark.parametrize("job_id", ["", "1", "not-a-uuid", str(uuid.uuid4())])
async def test_malformed_job_id_is_invalid_argument(
    jobs_stub: pb_grpc.JobServiceAsyncStub, job_id: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await jobs_stub.GetStatus(pb.GetStatusRequest(job_id=job_id))

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = _details(raised.value)
    assert "job_id" in violations


async def test_unknown_fields_are_rejected_not_ignored(grpc_channel: grpc.aio.Channel) -> None:
    known = pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum).SerializeToString()
    with_unknown_field_9 = known + bytes([9 << 3 | 0, 1])  # field 9, varint 1
    submit = grpc_channel.unary_unary(
        "/jobs.v1.JobService/SubmitJob",
        request_serializer=lambda raw: raw,
        response_deserializer=pb.Job.FromString,
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await submit(with_unknown_field_9)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _, violations = _details(raised.value)
    assert "unknown field" in violations["#9"]
