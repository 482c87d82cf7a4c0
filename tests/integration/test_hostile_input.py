"""Hypothesis sends hostile requests to the running service over gRPC and REST.

Whatever arrives, the answer is a success or a 4xx-class error naming the
problem; never a 5xx, a crash or a hang, and the service stays healthy.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import struct
import urllib.parse
import uuid
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


# What a client must never see: the database driver's or Python's own words.
DRIVER_TEXT = ("asyncpg", "SQLSTATE", "Traceback", "syntax error", "DataError", "Unexpected <class")
JOB_SERVICE = "/jobs.v1.JobService/"
INT32_MAX = 2**31 - 1


def _token(payload: object) -> str:
    """A page token as ListJobs encodes one, around any payload."""
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


def _forged(created_at: object) -> str:
    """A token for the unfiltered listing holding `created_at` as the previous page's end."""
    digest = hashlib.sha256(b"").hexdigest()[:16]
    return _token({"t": created_at, "i": str(uuid.uuid4()), "f": digest})


def _assert_invalid(error: grpc.RpcError, field: str) -> None:
    """INVALID_ARGUMENT naming `field`, in the details and the message, with no internals."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert field in _violated_fields(error), error
    message = error.details() or ""
    assert field in message
    assert not any(text in message for text in DRIVER_TEXT), message


def _assert_rest_invalid(response: httpx.Response, field: str) -> None:
    """HTTP 400 with a JSON body whose message names `field`, with no internals."""
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert field in message, message
    assert not any(text in response.text for text in DRIVER_TEXT), response.text


def _identity(raw: bytes) -> bytes:
    return raw


def _raw_watch(channel: grpc.Channel) -> grpc.UnaryStreamMultiCallable[bytes, bytes]:
    """WatchJob taking the request as bytes, so that any bytes can be sent."""
    return channel.unary_stream(
        JOB_SERVICE + "WatchJob", request_serializer=_identity, response_deserializer=_identity
    )


@pytest.fixture(scope="module")
def job_id(stub: pb_grpc.JobServiceStub) -> str:
    """A job that exists, so that only the hostile part of a request is wrong."""
    return str(stub.SubmitJob(pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum)).id)


HOSTILE_FILTERS = [
    'create_time > "0001-01-01T00:00:00+14:00"',
    'create_time < "0001-01-01T00:00:00+14:00"',
    'create_time > "9999-12-31T23:59:59-14:00"',
    'create_time <= "10000-01-01T00:00:00Z"',
    'create_time >= "0000-01-01T00:00:00Z"',
    'create_time = "2026-02-30T00:00:00Z"',
    'create_time > "\u0662\u0660\u0662\u0666-01-01T00:00:00Z"',  # Arabic-Indic digits
    " AND ".join(['status = "FAILED"'] * 11),
    'status = "FAILED" AND ' * 60 + 'status = "FAILED"',
    "(" * 2000,
]


@pytest.mark.parametrize("filter_text", HOSTILE_FILTERS)
def test_hostile_filters_are_invalid_argument_naming_the_filter(
    stub: pb_grpc.JobServiceStub, rest: httpx.Client, filter_text: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListJobs(pb.ListJobsRequest(filter=filter_text), timeout=30)
    response = rest.get("/api/v1/jobs", params={"filter": filter_text})

    _assert_invalid(raised.value, "filter")
    _assert_rest_invalid(response, "filter")


HOSTILE_TOKENS = {
    "year 1 at +14:00": _forged("0001-01-01T00:00:00+14:00"),
    "year 9999 at -14:00": _forged("9999-12-31T23:59:59-14:00"),
    "year 10000": _forged("10000-01-01T00:00:00Z"),
    "no time zone": _forged("2026-11-01T00:00:00"),
    "a number for a time": _forged(5),
    "nested": base64.urlsafe_b64encode(b"[" * 150 + b"]" * 150).decode(),
    "deeply nested": base64.urlsafe_b64encode(b"[" * 20_000 + b"]" * 20_000).decode(),
    "oversized": "A" * 10_000,
    "not base64": "%%%%!!",
    "not JSON": base64.urlsafe_b64encode(b"\xff\xfe not json").decode(),
    "a list": _token(["2026-11-01T00:00:00Z", str(uuid.uuid4()), "0" * 16]),
    "an object without keys": _token({}),
    "not ASCII": "\u00e9\u00e9\u00e9\u00e9",
}


@pytest.mark.parametrize("token", HOSTILE_TOKENS.values(), ids=HOSTILE_TOKENS.keys())
def test_hostile_page_tokens_are_invalid_argument_naming_the_token(
    stub: pb_grpc.JobServiceStub, rest: httpx.Client, token: str
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        stub.ListJobs(pb.ListJobsRequest(page_token=token), timeout=30)

    _assert_invalid(raised.value, "page_token")
    if len(token) < 4096:  # longer ones exceed the gateway's header limits
        _assert_rest_invalid(rest.get("/api/v1/jobs", params={"page_token": token}), "page_token")


def test_a_page_token_reused_with_another_filter_is_invalid_argument(
    stub: pb_grpc.JobServiceStub,
) -> None:
    for _ in range(2):
        stub.SubmitJob(pb.SubmitJobRequest(data=[1.0], operation=pb.square_sum), timeout=30)
    first = stub.ListJobs(pb.ListJobsRequest(page_size=1), timeout=30)
    assert first.next_page_token

    with pytest.raises(grpc.RpcError) as raised:
        stub.ListJobs(
            pb.ListJobsRequest(page_size=1, page_token=first.next_page_token, filter="status = 0"),
            timeout=30,
        )
    with pytest.raises(grpc.RpcError) as reused:
        stub.ListJobs(
            pb.ListJobsRequest(
                page_size=1, page_token=first.next_page_token, filter='status = "FAILED"'
            ),
            timeout=30,
        )

    # With a malformed filter, the filter is what is reported.
    _assert_invalid(raised.value, "filter")
    _assert_invalid(reused.value, "page_token")


HOSTILE_LAST_EVENT_IDS = [
    "\u00b2",  # superscript two: str.isdigit() says yes
    "\u0663",  # Arabic-Indic three
    "\uff15",  # full-width five
    str(INT32_MAX + 1),
    "9" * 40,
    "-1",
    "+5",
    " 5",
    "5 ",
    "1e3",
    "0x10",
    "1_000",
]


@pytest.mark.parametrize("header", HOSTILE_LAST_EVENT_IDS)
def test_hostile_last_event_ids_are_invalid_argument(
    channel: grpc.Channel, rest: httpx.Client, job_id: str, header: str
) -> None:
    watch = _raw_watch(channel)
    request = pb.WatchJobRequest(job_id=job_id).SerializeToString()
    with pytest.raises(grpc.RpcError) as raised:
        list(watch(request, metadata=(("last-event-id", header),), timeout=30))

    if header.isascii():
        _assert_invalid(raised.value, "Last-Event-ID")
    else:
        # gRPC metadata is ASCII: the client library refuses to send such a value at all.
        assert raised.value.code() == grpc.StatusCode.INTERNAL, raised.value
        assert raised.value.details() == "Invalid metadata", raised.value
    # HTTP trims whitespace around a header value: a REST client cannot send it.
    if header == header.strip():
        response = rest.get(
            f"/api/v1/jobs/{job_id}/watch", headers=[(b"last-event-id", header.encode())]
        )
        _assert_rest_invalid(response, "Last-Event-ID")


def test_the_largest_last_event_id_is_accepted(
    channel: grpc.Channel, rest: httpx.Client, job_id: str
) -> None:
    watch = _raw_watch(channel)
    request = pb.WatchJobRequest(job_id=job_id).SerializeToString()
    stream = watch(request, metadata=(("last-event-id", str(INT32_MAX)),), timeout=2)

    with pytest.raises(grpc.RpcError) as raised:
        list(stream)  # nothing after that sequence: heartbeats until the deadline

    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


@pytest.mark.parametrize("value", [-1, -(2**31)])
def test_negative_after_sequence_is_invalid_argument(
    stub: pb_grpc.JobServiceStub, job_id: str, value: int
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        list(stub.WatchJob(pb.WatchJobRequest(job_id=job_id, after_sequence=value), timeout=30))

    _assert_invalid(raised.value, "after_sequence")


@pytest.mark.parametrize("value", ["-1", str(INT32_MAX + 1), "9" * 30, "\u00b2", "1.5", "abc"])
def test_out_of_range_after_sequence_over_rest_is_400(
    rest: httpx.Client, job_id: str, value: str
) -> None:
    response = rest.get(f"/api/v1/jobs/{job_id}/watch", params={"after_sequence": value})

    assert response.status_code == 400, response.text
    assert response.json()["message"]
    assert not any(text in response.text for text in DRIVER_TEXT), response.text


_STRING_FIELD_1_BAD_UTF8 = b"\x0a\x02\xff\xfe"
MALFORMED_REQUESTS = [
    # (method, raw body, the field the answer must name)
    ("SubmitJob", b"\x0a\x10" + struct.pack("<d", 1.0), "data"),  # truncated packed run
    ("SubmitJob", b"\x0a\x03abc", "data"),  # not a whole number of doubles
    ("SubmitJob", b"\x10", "operation"),  # a key without its value
    ("SubmitJob", b"\x0a\x08" + struct.pack("<d", 1.0) + b"\x1a\x02\xc3\x28", "request_id"),
    ("SubmitJob", b"\x0a\x08" + struct.pack("<d", 1.0) + b"\x10\x63", "operation"),  # enum 99
    ("SubmitJob", b"\x0a\x08" + struct.pack("<d", 1.0) + b"\x12\x01\x01", "operation"),
    ("GetStatus", _STRING_FIELD_1_BAD_UTF8, "job_id"),
    ("GetStatus", b"\x0a\x05ab", "job_id"),
    ("GetStatus", b"\x0f", "job_id"),  # wire type 7
    ("GetResult", _STRING_FIELD_1_BAD_UTF8, "job_id"),
    ("GetResult", b"\x0d\x00\x00\x00\x00", "job_id"),  # fixed32 where a string belongs
    ("CancelJob", _STRING_FIELD_1_BAD_UTF8, "job_id"),
    ("CancelJob", b"\x00\x00", "#0"),
    ("ListJobs", b"\x1a\x01\xc3", "filter"),
    ("ListJobs", b"\x12\x03\xed\xa0\x80", "page_token"),  # an encoded surrogate
    ("ListJobs", b"\x08" + b"\xff" * 11, "page_size"),  # an overlong varint
    ("ListJobs", b"\x78\x01" * 5000, "request"),  # many unknown fields
    ("WatchJob", _STRING_FIELD_1_BAD_UTF8, "job_id"),
    ("WatchJob", b"\x10\xff", "after_sequence"),
    ("WatchJob", b"\x80", "request"),
    ("BatchSubmitJobs", b"\x0a\x05\x0a", "requests"),  # a request that runs off the end
    ("BatchSubmitJobs", b"\x0a\x04\x1a\x02\xc3\x28", "requests"),  # bad UTF-8 in a request
    ("BatchSubmitJobs", b"\x0a\x02\x10\x01\x10\x01", "#2"),  # an unknown field
    ("BatchSubmitJobs", b"\x0d\x00\x00\x00\x00", "requests"),  # fixed32 where a message belongs
    ("BatchSubmitJobs", b"", "requests"),  # no request at all
]


def _call_raw(target: grpc.Channel, method: str, raw: bytes) -> None:
    """Send `raw` as the request of `method`, reading a WatchJob stream to its end."""
    if method == "WatchJob":
        list(_raw_watch(target)(raw, timeout=30))
    else:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = target.unary_unary(
            JOB_SERVICE + method, request_serializer=_identity, response_deserializer=_identity
        )
        call(raw, timeout=30)


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        # Each fault named by its path in the batch: the request's index, then its field.
        (b"\x0a\x02\x10\x01" + b"\x0a\x04\x1a\x02\xc3\x28", "requests[1].request_id"),
        (b"\x0a\x02\x10\x01" * 3 + b"\x0a\x05\x0a\x03abc", "requests[3].data"),
        (b"\x0a\x02\x10\x01" + b"\x0a\x02\x38\x01", "requests[1].#7"),
    ],
)
@pytest.mark.parametrize("through", ["channel", "gateway"])
def test_a_malformed_request_in_a_batch_is_named_by_its_path(
    request: pytest.FixtureRequest, raw: bytes, field: str, through: str
) -> None:
    target: grpc.Channel = request.getfixturevalue(through)

    with pytest.raises(grpc.RpcError) as raised:
        _call_raw(target, "BatchSubmitJobs", raw)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value
    assert field in (raised.value.details() or "")


def test_a_batch_of_many_tiny_requests_is_refused_without_reading_them_all(
    channel: grpc.Channel,
) -> None:
    # Tens of thousands of empty requests fit in one message; protobuf would make an object of
    # each. The server stops at the first past the limit.
    raw = b"\x0a\x00" * (TEST_MAX_MESSAGE_BYTES // 2 - 16)

    with pytest.raises(grpc.RpcError) as raised:
        _call_raw(channel, "BatchSubmitJobs", raw)

    _assert_invalid(raised.value, "requests")
    assert "1 to 1000" in (raised.value.details() or "")


def test_an_oversized_batch_is_resource_exhausted(stub: pb_grpc.JobServiceStub) -> None:
    numbers = [1.0] * (TEST_MAX_MESSAGE_BYTES // 8 // 10 + 100)
    batch = pb.BatchSubmitJobsRequest(
        requests=[pb.SubmitJobRequest(data=numbers, operation=pb.square_sum)] * 10
    )

    with pytest.raises(grpc.RpcError) as raised:
        stub.BatchSubmitJobs(batch, timeout=30)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(("method", "raw", "field"), MALFORMED_REQUESTS)
@pytest.mark.parametrize("through", ["channel", "gateway"])
def test_malformed_protobuf_is_invalid_argument_naming_the_field(
    request: pytest.FixtureRequest, method: str, raw: bytes, field: str, through: str
) -> None:
    target: grpc.Channel = request.getfixturevalue(through)

    with pytest.raises(grpc.RpcError) as raised:
        _call_raw(target, method, raw)

    _assert_invalid(raised.value, field)
