"""Hypothesis throws hostile input at every RPC, over native gRPC and every REST path through Envoy.

Hostile strings, out-of-range numbers and timestamps, forged page tokens, random bytes as
protobuf bodies, random JSON bodies and query strings, hostile headers. Whatever arrives, the
answer is a success or a client error: never a 5xx, never UNKNOWN or INTERNAL, and every error
carries a message (a JSON body over REST) without driver text or a traceback.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jobs.v1 import jobs_service_pb2 as pb
from jobs.v1 import jobs_service_pb2_grpc as pb_grpc

HOSTILE = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# Answers a client may get for a request it got wrong (or for a job in the wrong state).
CLIENT_CODES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
}
# What a client must never see: the database driver's or Python's own words.
DRIVER_TEXT = ("asyncpg", "SQLSTATE", "Traceback", "syntax error", "DataError", "Unexpected <class")
JOB_SERVICE = "/jobs.v1.JobService/"
METHODS = [
    "SubmitJob",
    "BatchSubmitJobs",
    "GetStatus",
    "GetResult",
    "ListJobs",
    "CancelJob",
    "WatchJob",
]
REQUESTS: dict[str, type[Any]] = {
    "SubmitJob": pb.SubmitJobRequest,
    "BatchSubmitJobs": pb.BatchSubmitJobsRequest,
    "GetStatus": pb.GetStatusRequest,
    "GetResult": pb.GetResultRequest,
    "ListJobs": pb.ListJobsRequest,
    "CancelJob": pb.CancelJobRequest,
    "WatchJob": pb.WatchJobRequest,
}
INT32 = (-(2**31), 2**31 - 1)

# --- strategies -------------------------------------------------------------------------------

texts = st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=80)
hostile_strings = (
    st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "'; DROP TABLE jobs; --",
            '" OR 1=1 --',
            "$1",
            "%s%s%n",
            "\u00b2",
            "\u0663",
            "\uff15",
            "\u202e",
            "\ufeff",
            "\U0001f4a3",
            "null",
            "-0",
            "NaN",
            "Infinity",
            "9" * 40,
            "A" * 2000,
            "AND " * 300,
        ]
    )
    | texts
)
# Numbers around and beyond every boundary a field might have.
big_integers = st.sampled_from(
    [0, -1, 1, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**53 + 1, 2**63, -(2**63), 2**64, 10**30]
) | st.integers(-(2**70), 2**70)
int32s = st.integers(*INT32)
# RFC 3339-shaped times with years, offsets and digits out of every range.
years = st.sampled_from(["0000", "0001", "1969", "2026", "9999", "10000", "99999"]) | st.from_regex(
    r"\A[0-9]{4}\Z"
)
offsets = st.sampled_from(
    ["Z", "z", "+14:00", "-14:00", "+23:59", "-24:00", "+99:99", "", "+00:00:01"]
) | st.from_regex(r"\A[+-][0-9]{2}:[0-9]{2}\Z")
clock = st.sampled_from(
    ["00:00:00", "23:59:59", "24:00:00", "23:59:60", "00:00:00.123456789", "\u0661\u0662:00:00"]
)
timestamps = st.builds(
    lambda year, month_day, time_of_day, zone: f"{year}-{month_day}T{time_of_day}{zone}",
    years,
    st.sampled_from(["01-01", "12-31", "02-30", "13-01", "00-00"]),
    clock,
    offsets,
)
clauses = st.builds(
    lambda field, operator, value, quoted: (
        f'{field} {operator} "{value}"' if quoted else f"{field} {operator} {value}"
    ),
    st.sampled_from(["status", "operation", "create_time", "id", "AND", ""]),
    st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "==", "~"]),
    timestamps | st.sampled_from(["FAILED", "SUCCESS", "cube_sum", "square_sum"]) | hostile_strings,
    st.booleans(),
)
filters = (
    st.lists(clauses, min_size=1, max_size=14).map(" AND ".join)
    | hostile_strings
    | st.builds(lambda n: 'status = "FAILED" AND ' * n + 'status = "FAILED"', st.integers(0, 400))
)


def _token(payload: bytes) -> str:
    return base64.urlsafe_b64encode(payload).decode().rstrip("=")


_EMPTY_FILTER_DIGEST = hashlib.sha256(b"").hexdigest()[:16]
json_values = st.recursive(
    st.none() | st.booleans() | big_integers | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
page_tokens = (
    hostile_strings
    # Well-formed tokens holding hostile values.
    | st.builds(
        lambda created, job, digest: _token(
            json.dumps({"t": created, "i": job, "f": digest}).encode()
        ),
        timestamps | json_values,
        st.just(str(uuid.uuid4())) | json_values,
        st.just(_EMPTY_FILTER_DIGEST) | json_values,
    )
    | json_values.map(lambda value: _token(json.dumps(value).encode()))
    | st.integers(1, 5000).map(lambda depth: _token(b"[" * depth + b"]" * depth))
    | st.binary(max_size=300).map(_token)
)
job_ids = (
    hostile_strings
    | st.uuids().map(str)
    | st.uuids(version=4).map(lambda u: str(u).upper())
    | st.just("01a20000-0000-7000-8000-000000000000")
)
# Header values a client can put on the wire: no control characters (HTAB aside) and no
# whitespace at either end, which HTTP trims.
header_values = st.one_of(
    hostile_strings.map(lambda text: text.encode()),
    st.binary(max_size=60),
    big_integers.map(lambda number: str(number).encode()),
).filter(
    lambda raw: (
        raw == raw.strip() and all(byte >= 0x20 or byte == 0x09 for byte in raw) and 0x7F not in raw
    )
)
ascii_metadata = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60
).filter(lambda text: text == text.strip())


def _mutated(raw: bytes, cut: int, insert: bytes, flip: int) -> bytes:
    """`raw` truncated, with bytes inserted and one byte flipped: mostly malformed protobuf."""
    cut = cut % (len(raw) + 1)
    mutated = bytearray(raw[:cut] + insert + raw[cut:])
    if mutated:
        mutated[flip % len(mutated)] ^= 0xFF
    return bytes(mutated)


def _valid_message(method: str) -> bytes:
    """A well-formed request of `method`, for mutating."""
    job_id = str(uuid.uuid4())
    request = {
        "SubmitJob": pb.SubmitJobRequest(data=[1.0, 2.0], operation=pb.square_sum, request_id="k"),
        "BatchSubmitJobs": pb.BatchSubmitJobsRequest(
            requests=[
                pb.SubmitJobRequest(data=[1.0, 2.0], operation=pb.square_sum, request_id="k1"),
                pb.SubmitJobRequest(data=[3.0], operation=pb.cube_sum),
            ]
        ),
        "GetStatus": pb.GetStatusRequest(job_id=job_id),
        "GetResult": pb.GetResultRequest(job_id=job_id),
        "ListJobs": pb.ListJobsRequest(page_size=5, filter='status = "FAILED"', page_token="x"),
        "CancelJob": pb.CancelJobRequest(job_id=job_id),
        "WatchJob": pb.WatchJobRequest(job_id=job_id, after_sequence=3),
    }[method]
    return bytes(request.SerializeToString())


raw_bodies = st.sampled_from(METHODS).flatmap(
    lambda method: st.tuples(
        st.just(method),
        st.binary(max_size=300)
        | st.builds(
            _mutated,
            st.just(_valid_message(method)),
            st.integers(0, 200),
            st.binary(max_size=12),
            st.integers(0, 200),
        ),
    )
)

# --- fixtures and checks ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_job(stub: pb_grpc.JobServiceStub) -> str:
    """A job that has finished, so that every watch of it ends by itself."""
    job = stub.SubmitJob(pb.SubmitJobRequest(data=[1.0, 2.0], operation=pb.square_sum))
    deadline = time.monotonic() + 30
    while stub.GetStatus(pb.GetStatusRequest(job_id=job.id)).status != pb.SUCCESS:
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    return str(job.id)


def _identity(raw: bytes) -> bytes:
    return raw


def _failure(call: Callable[[], object]) -> grpc.RpcError | None:
    """The error `call` ends with, or None when it succeeds."""
    try:
        call()
    except grpc.RpcError as error:
        return error
    return None


def _check_grpc(call: Callable[[], object]) -> None:
    """The call succeeds or fails with a client error carrying a clean message."""
    error = _failure(call)
    if error is None:
        return
    assert error.code() in CLIENT_CODES, error
    message = error.details() or ""
    assert message, error
    assert not any(text in message for text in DRIVER_TEXT), message
    if error.code() == grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(error)
        assert status is not None, "errors must carry google.rpc.Status details"
        fields = set()
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                fields |= {violation.field for violation in bad_request.field_violations}
        assert fields, "INVALID_ARGUMENT must name the fields at fault"


def _check_rest(response: httpx.Response) -> None:
    """Below 500; an error is a JSON body with a message and no driver text."""
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), response.text
        assert body.get("message"), response.text
        assert not any(text in response.text for text in DRIVER_TEXT), response.text


def _read_watch(stream: Iterator[Any]) -> None:
    for _ in stream:
        pass


# --- native gRPC ----------------------------------------------------------------------------------


@HOSTILE
@given(method_and_raw=raw_bodies, through=st.sampled_from(["channel", "gateway"]))
def test_any_bytes_as_any_request(
    request: pytest.FixtureRequest, method_and_raw: tuple[str, bytes], through: str
) -> None:
    method, raw = method_and_raw
    target: grpc.Channel = request.getfixturevalue(through)
    if method == "WatchJob":
        # Random bytes name no existing job, so no watch here runs on.
        watch: grpc.UnaryStreamMultiCallable[bytes, bytes] = target.unary_stream(
            JOB_SERVICE + method, request_serializer=_identity, response_deserializer=_identity
        )
        _check_grpc(lambda: _read_watch(watch(raw, timeout=30)))
        return
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = target.unary_unary(
        JOB_SERVICE + method, request_serializer=_identity, response_deserializer=_identity
    )
    _check_grpc(lambda: call(raw, timeout=30))


@HOSTILE
@given(
    data=st.lists(st.floats() | big_integers.map(float), max_size=20),
    operation=int32s,
    request_id=hostile_strings,
    idempotency_key=st.none() | ascii_metadata,
)
def test_submit_job(
    stub: pb_grpc.JobServiceStub,
    data: list[float],
    operation: int,
    request_id: str,
    idempotency_key: str | None,
) -> None:
    metadata = () if idempotency_key is None else (("idempotency-key", idempotency_key),)
    request = pb.SubmitJobRequest(data=data, operation=operation, request_id=request_id)  # type: ignore[arg-type]
    _check_grpc(lambda: stub.SubmitJob(request, metadata=metadata, timeout=30))


hostile_submissions = st.builds(
    pb.SubmitJobRequest,
    data=st.lists(st.floats() | big_integers.map(float), max_size=6),
    operation=int32s,
    request_id=hostile_strings,
)


@HOSTILE
@given(
    requests=st.lists(hostile_submissions, max_size=6)
    # A request repeated, or its key reused for another: one job, or a violation naming both.
    | st.lists(hostile_submissions, min_size=1, max_size=3).map(lambda some: some + some[:1]),
    idempotency_key=st.none() | ascii_metadata,
)
def test_batch_submit_jobs(
    stub: pb_grpc.JobServiceStub,
    requests: list[pb.SubmitJobRequest],
    idempotency_key: str | None,
) -> None:
    metadata = () if idempotency_key is None else (("idempotency-key", idempotency_key),)
    batch = pb.BatchSubmitJobsRequest(requests=requests)
    _check_grpc(lambda: stub.BatchSubmitJobs(batch, metadata=metadata, timeout=30))


@HOSTILE
@given(job_id=job_ids, method=st.sampled_from(["GetStatus", "GetResult", "CancelJob"]))
def test_get_status_get_result_cancel_job(
    stub: pb_grpc.JobServiceStub, job_id: str, method: str
) -> None:
    call = getattr(stub, method)
    _check_grpc(lambda: call(REQUESTS[method](job_id=job_id), timeout=30))


@HOSTILE
@given(filter_text=filters, page_token=st.just("") | page_tokens, page_size=int32s)
def test_list_jobs(
    stub: pb_grpc.JobServiceStub, filter_text: str, page_token: str, page_size: int
) -> None:
    request = pb.ListJobsRequest(filter=filter_text, page_token=page_token, page_size=page_size)
    _check_grpc(lambda: stub.ListJobs(request, timeout=30))


@HOSTILE
@given(
    job_id=st.none() | job_ids,
    after_sequence=int32s | st.sampled_from([0, -1, INT32[0], INT32[1]]),
    last_event_id=st.none() | ascii_metadata | big_integers.map(str),
)
def test_watch_job(
    stub: pb_grpc.JobServiceStub,
    finished_job: str,
    job_id: str | None,
    after_sequence: int,
    last_event_id: str | None,
) -> None:
    request = pb.WatchJobRequest(job_id=job_id or finished_job, after_sequence=after_sequence)
    metadata = () if last_event_id is None else (("last-event-id", last_event_id),)
    _check_grpc(lambda: _read_watch(stub.WatchJob(request, metadata=metadata, timeout=30)))


# --- REST through Envoy ---------------------------------------------------------------------------


def _submit_bodies(max_numbers: int) -> st.SearchStrategy[dict[str, Any]]:
    """SubmitJob requests as JSON, with hostile numbers, operations and request ids."""
    return st.fixed_dictionaries(
        {"data": st.lists(st.floats() | big_integers | texts, max_size=max_numbers)},
        optional={
            "operation": json_values | st.sampled_from(["square_sum", "cube_sum", 99]),
            "request_id": json_values | hostile_strings,
        },
    )


def _post_json(
    rest: httpx.Client, path: str, *, body: Any, idempotency_key: bytes | None, raw: bytes | None
) -> httpx.Response:
    """POST `body` as JSON (or `raw` in its place), with an Idempotency-Key header if one is given."""
    headers = [(b"content-type", b"application/json")]
    if idempotency_key is not None:
        headers.append((b"idempotency-key", idempotency_key))
    content = raw if raw is not None else json.dumps(body).encode()
    return rest.post(path, content=content, headers=headers)


@HOSTILE
@given(
    body=json_values | _submit_bodies(max_numbers=10),
    idempotency_key=st.none() | header_values,
    raw=st.none() | st.binary(max_size=200),
)
def test_post_jobs(
    rest: httpx.Client, body: Any, idempotency_key: bytes | None, raw: bytes | None
) -> None:
    _check_rest(
        _post_json(rest, "/api/v1/jobs", body=body, idempotency_key=idempotency_key, raw=raw)
    )


@HOSTILE
@given(
    body=json_values
    | st.fixed_dictionaries(
        {"requests": st.lists(json_values | _submit_bodies(max_numbers=6), max_size=6)},
        optional={"extra": json_values},
    ),
    idempotency_key=st.none() | header_values,
    raw=st.none() | st.binary(max_size=200),
)
def test_post_batch_submit(
    rest: httpx.Client, body: Any, idempotency_key: bytes | None, raw: bytes | None
) -> None:
    _check_rest(
        _post_json(
            rest, "/api/v1/jobs:batchSubmit", body=body, idempotency_key=idempotency_key, raw=raw
        )
    )


@HOSTILE
@given(
    params=st.dictionaries(
        st.sampled_from(["filter", "page_token", "page_size", "pageSize", "job_id", "x"]) | texts,
        filters | page_tokens | big_integers.map(str),
        max_size=4,
    ),
    raw_query=st.none() | texts,
)
def test_get_jobs(rest: httpx.Client, params: dict[str, str], raw_query: str | None) -> None:
    # A raw query keeps its structure (and stray % escapes); characters no URL may hold are escaped.
    query = (
        urllib.parse.quote(raw_query, safe="=&+%;/?")
        if raw_query is not None
        else urllib.parse.urlencode(params)
    )
    # Envoy refuses request lines beyond its header limits (431); those never reach the server.
    _check_rest(rest.get(f"/api/v1/jobs?{query}"))


@HOSTILE
@given(job_id=job_ids, suffix=st.sampled_from(["status", "result"]))
def test_get_status_and_result(rest: httpx.Client, job_id: str, suffix: str) -> None:
    _check_rest(rest.get(f"/api/v1/jobs/{urllib.parse.quote(job_id, safe='')}/{suffix}"))


@HOSTILE
@given(
    job_id=st.none() | job_ids,
    after_sequence=st.none() | big_integers.map(str) | hostile_strings,
    last_event_id=st.none() | header_values,
)
def test_watch(
    rest: httpx.Client,
    finished_job: str,
    job_id: str | None,
    after_sequence: str | None,
    last_event_id: bytes | None,
) -> None:
    path = f"/api/v1/jobs/{urllib.parse.quote(job_id or finished_job, safe='')}/watch"
    params = {} if after_sequence is None else {"after_sequence": after_sequence}
    headers = [] if last_event_id is None else [(b"last-event-id", last_event_id)]
    _check_rest(rest.get(path, params=params, headers=headers))


@HOSTILE
@given(job_id=st.none() | job_ids, body=st.none() | json_values)
def test_cancel(rest: httpx.Client, finished_job: str, job_id: str | None, body: Any) -> None:
    path = f"/api/v1/jobs/{urllib.parse.quote(job_id or finished_job, safe='')}:cancel"
    content = b"" if body is None else json.dumps(body).encode()
    _check_rest(rest.post(path, content=content, headers={"content-type": "application/json"}))
