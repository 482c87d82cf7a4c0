"""SubmitJob's request read from the wire with its numbers left where they arrived.

Protobuf parses a request's numbers into a repeated field that then has to be copied
again into the array the job is validated and stored from: a big job is held twice over. A `repeated double` sent
packed (proto3 encoders do by default) is already that array: little-endian float64, 8
bytes a number. So the one `data` field is taken as a read-only view of the received bytes
and only the few other fields go through protobuf. Envoy's JSON transcoder sends `data`
unpacked (a key byte before each number): that run is read as a strided view, copied once
when stored. Anything else (split `data`, a malformed message) takes protobuf's own path,
with its errors. BENCHMARKS.md has what each path costs.

BatchSubmitJobs' request is split the same way: each of its `requests` as a SubmitJob request
(`ReceivedBatch`). Protobuf would also make an object of each request, and a batch can hold
millions of tiny ones within the message limit (16 MiB of empty requests is 8 million objects and
about half a GB), so the split stops at the first request past the limit, which refuses the call
anyway.

When protobuf refuses a request (of any JobService method), `malformed_field` walks its first
fields to say which one is at fault, for the INVALID_ARGUMENT answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from jobs.v1 import jobs_service_pb2 as pb
from numpy.typing import NDArray

from jobcore.errors import FieldViolation

_DATA_FIELD: Final = pb.SubmitJobRequest.DESCRIPTOR.fields_by_name["data"].number
_REQUESTS_FIELD: Final = pb.BatchSubmitJobsRequest.DESCRIPTOR.fields_by_name["requests"].number
# The most requests one BatchSubmitJobs call may hold (the contract's limit).
MAX_BATCH_REQUESTS: Final = 1000
_PACKED_DOUBLES: Final = np.dtype("<f8")

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/#structure).
_VARINT, _FIXED64, _LENGTH_DELIMITED, _START_GROUP, _END_GROUP, _FIXED32 = 0, 1, 2, 3, 4, 5

# One unpacked number: the field's key (one byte for field 1), then the double.
_UNPACKED_KEY: Final = _DATA_FIELD << 3 | _FIXED64
_UNPACKED_DOUBLE: Final = np.dtype([("key", "u1"), ("value", "<f8")])
# The fields besides `data` are walked here one by one in Python. A request has only a few of
# them; one with more is left to protobuf, which walks fields in C, so no request makes this
# loop long.
_MAX_OTHER_FIELDS: Final = 16
# How many fields the diagnosis of a malformed request looks at, which bounds its work too.
_MAX_FIELDS_DIAGNOSED: Final = 64


class _Unusual(Exception):
    """The request is not a plain packed one: let protobuf parse (or reject) all of it."""


@dataclass(frozen=True, slots=True)
class ReceivedSubmitJob:
    """A SubmitJobRequest as the servicer gets it: `data` as an array, the rest as protobuf."""

    message: pb.SubmitJobRequest  # every field but `data` (which is left empty)
    data: NDArray[np.float64]

    @classmethod
    def from_message(cls, request: pb.SubmitJobRequest) -> ReceivedSubmitJob:
        """Split an already parsed request, which is left as it is."""
        message = pb.SubmitJobRequest()
        message.CopyFrom(request)
        return cls._taking_data(message)

    @classmethod
    def from_wire(cls, raw: bytes | memoryview) -> ReceivedSubmitJob:
        """The request deserializer: `data` stays in `raw`, viewed in place."""
        try:
            return _split(raw)
        except _Unusual:
            return cls._taking_data(pb.SubmitJobRequest.FromString(bytes(raw)))

    @classmethod
    def _taking_data(cls, message: pb.SubmitJobRequest) -> ReceivedSubmitJob:
        """Move `data` out of a message of our own into an array."""
        data = np.asarray(message.data, dtype=np.float64)
        message.ClearField("data")
        return cls(message, data)


class MalformedRequest(DecodeError):
    """A request protobuf would refuse, with the violation that says where."""

    def __init__(self, violation: FieldViolation) -> None:
        self.violation = violation
        super().__init__(f"{violation.field}: {violation.description}")


@dataclass(frozen=True, slots=True)
class ReceivedBatch:
    """A BatchSubmitJobsRequest as the servicer gets it: each request as a ReceivedSubmitJob.

    `requests` stops at MAX_BATCH_REQUESTS + 1: a batch holding more is refused whatever
    follows, so the rest is never read.
    """

    message: pb.BatchSubmitJobsRequest  # every field but `requests` (which is left empty)
    requests: list[ReceivedSubmitJob]

    @classmethod
    def from_message(cls, request: pb.BatchSubmitJobsRequest) -> ReceivedBatch:
        """Split an already parsed request, which is left as it is."""
        message = pb.BatchSubmitJobsRequest()
        message.CopyFrom(request)
        message.ClearField("requests")
        return cls(
            message,
            [
                ReceivedSubmitJob.from_message(one)
                for one in request.requests[: MAX_BATCH_REQUESTS + 1]
            ],
        )

    @classmethod
    def from_wire(cls, raw: bytes) -> ReceivedBatch:
        """The request deserializer: each request split as SubmitJob's, in place.

        Raises MalformedRequest (a DecodeError) naming the field at fault, `requests[3].data`
        for one inside a request.
        """
        view = memoryview(raw)
        others = bytearray()  # the other fields, for protobuf (to name them as unknown)
        other_fields = 0
        requests: list[ReceivedSubmitJob] = []
        position = 0
        try:
            while position < len(raw) and len(requests) <= MAX_BATCH_REQUESTS:
                start = position
                key, position = _varint(view, position)
                if key == _REQUESTS_FIELD << 3 | _LENGTH_DELIMITED:
                    length, position = _varint(view, position)
                    if position + length > len(raw):
                        raise _Unusual
                    requests.append(
                        _one_of_batch(view[position : position + length], len(requests))
                    )
                    position += length
                    continue
                other_fields += 1
                position = _skip(view, position, key & 7)
                if position > len(raw):
                    raise _Unusual
                others += view[start:position]
                if other_fields > _MAX_OTHER_FIELDS:
                    break  # enough to refuse the call with
        except _Unusual:
            raise MalformedRequest(
                malformed_field(raw, pb.BatchSubmitJobsRequest.DESCRIPTOR)
            ) from None
        return cls(pb.BatchSubmitJobsRequest.FromString(bytes(others)), requests)


def _one_of_batch(raw: memoryview, index: int) -> ReceivedSubmitJob:
    """The request at `index` of a batch; MalformedRequest naming its field if it has none."""
    try:
        return ReceivedSubmitJob.from_wire(raw)
    except DecodeError:
        fault = malformed_field(raw, pb.SubmitJobRequest.DESCRIPTOR)
        field = f"requests[{index}]" + ("" if fault.field == "request" else f".{fault.field}")
        raise MalformedRequest(FieldViolation(field, fault.description)) from None


def _split(raw: bytes | memoryview) -> ReceivedSubmitJob:
    view = memoryview(raw)
    others = bytearray()  # the other fields, re-parsed by protobuf (they are small)
    other_fields = 0
    numbers: NDArray[np.float64] | None = None
    position = 0
    while position < len(raw):
        start = position
        key, position = _varint(view, position)
        field, wire_type = key >> 3, key & 7
        if field != _DATA_FIELD:
            other_fields += 1
            if other_fields > _MAX_OTHER_FIELDS:
                raise _Unusual
            position = _skip(view, position, wire_type)
            others += view[start:position]
        elif numbers is not None:
            raise _Unusual  # `data` split into several runs
        elif wire_type == _LENGTH_DELIMITED:
            numbers, position = _packed_run(raw, view, position)
        elif wire_type == _FIXED64:
            numbers, position = _unpacked_run(raw, start)
        else:
            raise _Unusual
    if position != len(raw):
        raise _Unusual
    message = pb.SubmitJobRequest.FromString(bytes(others))
    return ReceivedSubmitJob(message, np.empty(0) if numbers is None else numbers)


def _packed_run(
    raw: bytes | memoryview, view: memoryview, position: int
) -> tuple[NDArray[np.float64], int]:
    """The packed numbers whose length is at `position`, and where they end."""
    length, position = _varint(view, position)
    if length % _PACKED_DOUBLES.itemsize or position + length > len(raw):
        raise _Unusual
    count = length // _PACKED_DOUBLES.itemsize
    return np.frombuffer(raw, dtype=_PACKED_DOUBLES, count=count, offset=position), (
        position + length
    )


def _unpacked_run(raw: bytes | memoryview, start: int) -> tuple[NDArray[np.float64], int]:
    """The run of unpacked numbers from the key at `start`, and where it ends."""
    records = np.frombuffer(
        raw,
        dtype=_UNPACKED_DOUBLE,
        count=(len(raw) - start) // _UNPACKED_DOUBLE.itemsize,
        offset=start,
    )
    is_number = records["key"] == _UNPACKED_KEY
    count = len(records) if is_number.all() else int(is_number.argmin())
    if count == 0:
        raise _Unusual  # a truncated number
    return records["value"][:count], start + count * _UNPACKED_DOUBLE.itemsize


def _varint(view: memoryview, position: int) -> tuple[int, int]:
    value = shift = 0
    while position < len(view) and shift < 64:
        byte = view[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise _Unusual


def _skip(view: memoryview, position: int, wire_type: int) -> int:
    """Where the value of a field that is not `data` ends."""
    if wire_type == _VARINT:
        return _varint(view, position)[1]
    if wire_type == _FIXED64:
        return position + 8
    if wire_type == _FIXED32:
        return position + 4
    if wire_type == _LENGTH_DELIMITED:
        length, position = _varint(view, position)
        return position + length
    raise _Unusual  # groups: not in this message, and protobuf knows what to do with them


def malformed_field(raw: bytes | memoryview, descriptor: Descriptor) -> FieldViolation:
    """What makes `raw`, which protobuf refused, not a `descriptor` message, naming the field.

    Only the first few fields are looked at (_MAX_FIELDS_DIAGNOSED), so a large request costs
    little; past them, or where the fault is not one this recognises, the whole request is named.
    """
    view = memoryview(raw)
    position = 0
    for _ in range(_MAX_FIELDS_DIAGNOSED):
        if position >= len(raw):
            break
        try:
            key, value_start = _varint(view, position)
        except _Unusual:
            return FieldViolation("request", f"has a malformed field key at byte {position}")
        number, wire_type = key >> 3, key & 7
        field = descriptor.fields_by_number.get(number)
        if wire_type == _START_GROUP and field is None:
            break  # legal for an unknown field: protobuf's own complaint lies elsewhere
        fault, position = _fault(view, number, wire_type, value_start, field=field)
        if fault is not None:
            return FieldViolation(field.name if field is not None else f"#{number}", fault)
    return FieldViolation("request", f"is not a valid {descriptor.full_name} message")


def _fault(
    view: memoryview,
    number: int,
    wire_type: int,
    value_start: int,
    *,
    field: FieldDescriptor | None,
) -> tuple[str | None, int]:
    """What is wrong with the field whose value starts at `value_start`, and where it ends."""
    if number == 0 or wire_type in (_START_GROUP, _END_GROUP) or wire_type > _FIXED32:
        return f"has an invalid field key (field {number}, wire type {wire_type})", value_start
    try:
        end = _skip(view, value_start, wire_type)
    except _Unusual:
        end = len(view) + 1  # a varint that runs off the end or past 10 bytes
    if end > len(view):
        return "is truncated or malformed", end
    if field is None or wire_type != _LENGTH_DELIMITED:
        return None, end
    return _content_fault(view[_varint(view, value_start)[1] : end], field), end


def _content_fault(content: memoryview, field: FieldDescriptor) -> str | None:
    """What is wrong with the bytes of a length-delimited field, if protobuf would mind."""
    if field.type == FieldDescriptor.TYPE_STRING:
        try:
            str(content, "utf-8")
        except UnicodeDecodeError:
            return "is not valid UTF-8"
    if field.type == FieldDescriptor.TYPE_DOUBLE and len(content) % _PACKED_DOUBLES.itemsize:
        return "is truncated (packed numbers are 8 bytes each)"
    return None
