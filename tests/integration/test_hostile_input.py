"""Hypothesis sends hostile requests to the running service over gRPC and REST.

Whatever arrives, the answer is a success or a 4xx-class error naming the
problem; never a 5xx, a crash or a hang, and the service stays healthy.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

from devstack.stack import Stack
from tests.conftest import TEST_MAX_JOB_NUMBERS, TEST_MAX_MESSAGE_BYTES

HOSTILE = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}

numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70).map(float)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def channel(stack: Stack) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        stack.grpc_target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as opened:
        yield opened


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> pb_grpc.JobServiceStub:
    return pb_grpc.JobServiceStub(channel)


@pytest.fixture(scope="module")
def rest(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.http_base, timeout=30) as client:
        yield client


def _violated_fields(error: grpc.RpcError) -> set[str]:
    status = rpc_status.from_call(error)
    assert status is not None, "errors must carry google.rpc.Status details"
    fields: set[str] = set()
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            fields |= {v.field.split("[")[0] for v in bad_request.field_violations}
    return fields


def _submit(
    stub: pb_grpc.JobServiceStub, request: pb.SubmitJobRequest
) -> tuple[pb.Job | None, grpc.RpcError | None]:
    try:
        return stub.SubmitJob(request, timeout=30), None
    except grpc.RpcError as error:
        return None, error


@HOSTILE
@given(
    data=st.lists(numbers, max_size=TEST_MAX_JOB_NUMBERS + 50),
    operation=st.integers(-3, 8),
    request_id=st.text(max_size=200) | st.just(""),
)
def test_any_submission_is_accepted_or_rejected_naming_a_field(
    stub: pb_grpc.JobServiceStub, data: list[float], operation: int, request_id: str
) -> None:
    request = pb.SubmitJobRequest(data=data, operation=operation, request_id=request_id)  # type: ignore[arg-type]
    valid = (
        0 < len(data) <= TEST_MAX_JOB_NUMBERS
        and all(math.isfinite(x) for x in data)
        and operation in (pb.square_sum, pb.cube_sum)
        and (request_id == "" or (len(request_id) <= 128 and request_id.isprintable()))
    )
    job, error = _submit(stub, request)

    if error is None:
        assert valid
        assert job is not None
        assert job.status == pb.PENDING
        return
    # A random request_id may collide with an earlier example's: ALREADY_EXISTS is right then.
    assert error.code() in CLIENT_ERRORS | {grpc.StatusCode.ALREADY_EXISTS}, error
    assert not valid or error.code() == grpc.StatusCode.ALREADY_EXISTS
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        fields = _violated_fields(error)
        assert fields
        assert fields <= {"data", "operation", "request_id"}


@HOSTILE
@given(job_id=st.text(max_size=100))
def test_any_job_id_is_invalid_or_not_found(stub: pb_grpc.JobServiceStub, job_id: str) -> None:
    for call in (
        lambda: stub.GetStatus(pb.GetStatusRequest(job_id=job_id), timeout=30),
        lambda: stub.GetResult(pb.GetResultRequest(job_id=job_id), timeout=30),
        lambda: stub.CancelJob(pb.CancelJobRequest(job_id=job_id), timeout=30),
        lambda: list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=30)),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() in CLIENT_ERRORS, raised.value


def test_oversized_grpc_message_is_resource_exhausted(stub: pb_grpc.JobServiceStub) -> None:
    too_big = [1.0] * (TEST_MAX_MESSAGE_BYTES // 8 + 1000)

    with pytest.raises(grpc.RpcError) as raised:
        stub.SubmitJob(pb.SubmitJobRequest(data=too_big, operation=pb.square_sum), timeout=30)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@HOSTILE
@given(body=json_values)
def test_any_json_body_gets_a_json_answer_below_500(rest: httpx.Client, body: Any) -> None:
    response = rest.post("/api/v1/jobs/", json=body)

    assert response.status_code in (201, 400, 413), response.text
    answer = response.json()
    if response.status_code != 201:
        assert answer["message"]


@HOSTILE
@given(raw=st.binary(max_size=300))
def test_any_bytes_as_a_body_are_rejected_cleanly(rest: httpx.Client, raw: bytes) -> None:
    response = rest.post("/api/v1/jobs/", content=raw, headers={"content-type": "application/json"})

    assert response.status_code in (201, 400), response.text
    assert "message" in response.json() or response.status_code == 201


@HOSTILE
@given(
    segment=st.text(alphabet=st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=60),
    suffix=st.sampled_from(["status", "result", "watch"]),
)
def test_any_path_id_is_400_or_404(rest: httpx.Client, segment: str, suffix: str) -> None:
    response = rest.get(f"/api/v1/jobs/{urllib.parse.quote(segment, safe='')}/{suffix}")

    assert response.status_code in (400, 404), response.text
    assert json.loads(response.text)["message"]


def test_oversized_rest_body_is_413(rest: httpx.Client) -> None:
    payload = {"data": [1.5] * (TEST_MAX_MESSAGE_BYTES // 3), "operation": "square_sum"}

    response = rest.post("/api/v1/jobs/", json=payload)

    assert response.status_code == 413
    assert response.json()["code"] == 8


def test_service_is_still_healthy_afterwards(channel: grpc.Channel, rest: httpx.Client) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service="jobs.v1.JobService"), timeout=10
    )

    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert rest.get("/health").status_code == 200
