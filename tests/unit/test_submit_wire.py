"""SubmitJob's deserializer: the same request protobuf would parse, numbers left in place."""

from __future__ import annotations

import struct
from typing import cast
from unittest.mock import patch

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from hypothesis import given
from hypothesis import strategies as st
from jobs.v1 import jobs_service_pb2 as pb

from server import submit_wire
from server.submit_wire import (
    MAX_BATCH_REQUESTS,
    MalformedRequest,
    ReceivedBatch,
    ReceivedSubmitJob,
    malformed_field,
)

requests = st.builds(
    pb.SubmitJobRequest,
    operation=st.integers(0, 3),
    data=st.lists(st.floats(), max_size=20),
    request_id=st.text(max_size=10),
)
# Up to 150 numbers: unpacked runs of every length up to a few hundred records.
longer_requests = st.builds(
    pb.SubmitJobRequest,
    operation=st.integers(0, 3),
    data=st.lists(st.floats(), max_size=150),
    request_id=st.text(max_size=10),
)


def _same(received: ReceivedSubmitJob, request: pb.SubmitJobRequest) -> None:
    assert received.data.dtype == np.float64
    assert received.data.tobytes() == np.asarray(request.data, dtype=np.float64).tobytes()
    expected = pb.SubmitJobRequest()
    expected.CopyFrom(request)
    expected.ClearField("data")
    assert received.message == expected
    assert not received.message.data


@given(requests)
def test_a_split_request_equals_the_parsed_one(request: pb.SubmitJobRequest) -> None:
    _same(ReceivedSubmitJob.from_wire(request.SerializeToString()), request)
    _same(ReceivedSubmitJob.from_message(request), request)


def test_the_numbers_stay_in_the_received_bytes() -> None:
    numbers = np.random.default_rng(7).normal(size=100_000)
    request = pb.SubmitJobRequest(operation=pb.cube_sum, data=numbers.tolist(), request_id="k")
    raw = request.SerializeToString()
    received = ReceivedSubmitJob.from_wire(raw)
    assert np.shares_memory(received.data, np.frombuffer(raw, dtype=np.uint8))
    assert not received.data.flags.writeable
    _same(received, request)


def _unpacked(request: pb.SubmitJobRequest, *, data_first: bool) -> bytes:
    """The request as Envoy's JSON transcoder encodes it: every number with its own key."""
    numbers = b"".join(b"\x09" + struct.pack("<d", x) for x in request.data)
    others = pb.SubmitJobRequest()
    others.CopyFrom(request)
    others.ClearField("data")
    rest = others.SerializeToString()
    return numbers + rest if data_first else rest + numbers


@given(longer_requests, st.booleans())
def test_unpacked_numbers_are_read_like_packed_ones(
    request: pb.SubmitJobRequest, data_first: bool
) -> None:
    raw = _unpacked(request, data_first=data_first)
    assert pb.SubmitJobRequest.FromString(raw) == request
    _same(ReceivedSubmitJob.from_wire(raw), request)


def test_unpacked_numbers_are_viewed_in_the_received_bytes() -> None:
    numbers = np.random.default_rng(3).normal(size=1000)
    request = pb.SubmitJobRequest(operation=pb.cube_sum, data=numbers.tolist())
    raw = _unpacked(request, data_first=True)
    received = ReceivedSubmitJob.from_wire(raw)
    assert received.data.tobytes() == numbers.tobytes()
    assert np.shares_memory(received.data, np.frombuffer(raw, dtype=np.uint8))
    assert received.message.operation == pb.cube_sum


def test_numbers_split_over_two_packed_runs_keep_their_order() -> None:
    first, second = (b"\x0a\x08" + struct.pack("<d", x) for x in (1.0, 2.0))
    received = ReceivedSubmitJob.from_wire(first + b"\x10\x01" + second)
    assert received.data.tolist() == [1.0, 2.0]
    assert received.message.operation == pb.square_sum


def test_unknown_fields_are_kept_for_the_interceptor_to_reject() -> None:
    raw = pb.SubmitJobRequest(operation=pb.square_sum, data=[1.0]).SerializeToString()
    received = ReceivedSubmitJob.from_wire(raw + b"\x78\x05")  # field 15, varint 5
    fields = UnknownFieldSet(received.message)
    assert [fields[index].field_number for index in range(len(fields))] == [15]
    assert received.data.tolist() == [1.0]


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x10" + struct.pack("<d", 1.0),  # data shorter than its length says
        b"\x0a\x07" + b"\x00" * 7,  # not a whole number of doubles
        b"\x10",  # a key without its value
        b"\x1a\xff",  # request_id with a truncated length
    ],
)
def test_a_malformed_request_fails_as_protobuf_fails(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.SubmitJobRequest.FromString(raw)
    with pytest.raises(DecodeError):
        ReceivedSubmitJob.from_wire(raw)


@given(st.binary(max_size=40))
def test_any_bytes_decode_as_protobuf_decodes_them(raw: bytes) -> None:
    try:
        request = pb.SubmitJobRequest.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            ReceivedSubmitJob.from_wire(raw)
        return
    received = ReceivedSubmitJob.from_wire(raw)
    assert received.data.tobytes() == np.asarray(request.data, dtype=np.float64).tobytes()
    assert received.message.operation == request.operation
    assert received.message.request_id == request.request_id


def test_many_small_fields_are_left_to_protobuf_and_read_the_same() -> None:
    # Every repeat of a field outside `data` is walked in Python unless there are many.
    raw = pb.SubmitJobRequest(data=[1.0, 2.0]).SerializeToString() + b"\x10\x01" * 100_000
    received = ReceivedSubmitJob.from_wire(raw)
    assert received.data.tolist() == [1.0, 2.0]
    assert received.message.operation == pb.square_sum
    with patch("server.submit_wire._skip", wraps=submit_wire._skip) as skip:
        ReceivedSubmitJob.from_wire(b"\x10\x01" * 100_000)
    assert skip.call_count < 100


@pytest.mark.parametrize(
    ("message", "raw", "field", "fragment"),
    [
        (pb.GetStatusRequest, b"\x0a\x05ab", "job_id", "truncated"),
        (pb.GetStatusRequest, b"\x0a\x02\xff\xfe", "job_id", "UTF-8"),
        (pb.GetStatusRequest, b"\x0f", "job_id", "wire type 7"),
        (pb.GetStatusRequest, b"\x0c", "job_id", "wire type 4"),
        (pb.WatchJobRequest, b"\x10" + b"\xff" * 11, "after_sequence", "truncated"),
        (pb.ListJobsRequest, b"\x1a\x01\xc3", "filter", "UTF-8"),
        (pb.ListJobsRequest, b"\x12\x03\xed\xa0\x80", "page_token", "UTF-8"),
        (pb.SubmitJobRequest, b"\x0a\x03abc", "data", "8 bytes each"),
        (pb.SubmitJobRequest, b"\x1a\x01\x80", "request_id", "UTF-8"),
        (pb.CancelJobRequest, b"\x00\x00", "#0", "field 0"),
        (pb.CancelJobRequest, b"\x80", "request", "byte 0"),
    ],
)
def test_the_field_that_makes_a_request_malformed_is_named(
    message: type[Message], raw: bytes, field: str, fragment: str
) -> None:
    with pytest.raises(DecodeError):
        message.FromString(raw)

    violation = malformed_field(raw, cast(Descriptor, message.DESCRIPTOR))

    assert violation.field == field
    assert fragment in violation.description


@given(st.binary(max_size=60))
def test_any_malformed_bytes_get_a_violation(raw: bytes) -> None:
    try:
        pb.ListJobsRequest.FromString(raw)
    except DecodeError:
        violation = malformed_field(raw, pb.ListJobsRequest.DESCRIPTOR)
        assert violation.field
        assert violation.description


# --- BatchSubmitJobs ------------------------------------------------------------------------

batches = st.builds(pb.BatchSubmitJobsRequest, requests=st.lists(requests, max_size=8))


@given(batches)
def test_a_split_batch_equals_the_parsed_one(batch: pb.BatchSubmitJobsRequest) -> None:
    for received in (
        ReceivedBatch.from_wire(batch.SerializeToString()),
        ReceivedBatch.from_message(batch),
    ):
        assert received.message == pb.BatchSubmitJobsRequest()
        assert len(received.requests) == len(batch.requests)
        for one, request in zip(received.requests, batch.requests, strict=True):
            _same(one, request)


def test_a_batchs_numbers_stay_in_the_received_bytes() -> None:
    numbers = np.random.default_rng(7).normal(size=(10, 10_000))
    batch = pb.BatchSubmitJobsRequest(
        requests=[pb.SubmitJobRequest(data=row.tolist(), operation=pb.cube_sum) for row in numbers]
    )
    raw = batch.SerializeToString()

    received = ReceivedBatch.from_wire(raw)

    for one, row in zip(received.requests, numbers, strict=True):
        assert np.shares_memory(one.data, np.frombuffer(raw, dtype=np.uint8))
        assert np.array_equal(one.data, row)


def test_requests_past_the_limit_are_not_read() -> None:
    raw = b"\x0a\x00" * 50_000 + b"\x0a\x05\x0a"  # the truncated last one is never reached

    received = ReceivedBatch.from_wire(raw)

    assert len(received.requests) == MAX_BATCH_REQUESTS + 1


def test_other_fields_are_kept_for_protobuf_to_name() -> None:
    raw = b"\x0a\x02\x10\x01" + b"\x10\x05" + b"\x0d\x00\x00\x00\x00"

    received = ReceivedBatch.from_wire(raw)

    assert len(received.requests) == 1
    fields = UnknownFieldSet(received.message)
    assert sorted(fields[i].field_number for i in range(len(fields))) == [1, 2]


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"\x0a\x05\x0a", "requests"),
        (b"\x0a\x00\x0a\x04\x1a\x02\xc3\x28", "requests[1].request_id"),
        (b"\x0a\x03\x0a\x03abc", "requests[0]"),
        (b"\x0a\x01\x80", "requests[0]"),
    ],
)
def test_a_malformed_batch_names_the_field_by_its_path(raw: bytes, field: str) -> None:
    with pytest.raises(DecodeError) as raised:
        ReceivedBatch.from_wire(raw)

    assert isinstance(raised.value, MalformedRequest)
    assert raised.value.violation.field.startswith(field)
