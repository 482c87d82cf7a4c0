"""SubmitJob's request read from the wire with its numbers left where they arrived.

Protobuf parses a request's numbers into a repeated field that then has to be copied
again into the array the job is validated and stored from: a big job is held twice over. A `repeated double` sent
packed (proto3 encoders do by default) is already that array: little-endian float64, 8
bytes a number. So the one `data` field is taken as a read-only view of the received bytes
and only the few other fields go through protobuf. Envoy's JSON transcoder sends `data`
unpacked (a key byte before each number): that run is read as a strided view, copied once
when stored. Anything else (split `data`, a malformed message) takes protobuf's own path,
with its errors. BENCHMARKS.md has what each path costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
from jobs.v1 import jobs_service_pb2 as pb
from numpy.typing import NDArray

_DATA_FIELD: Final = pb.SubmitJobRequest.DESCRIPTOR.fields_by_name["data"].number
_PACKED_DOUBLES: Final = np.dtype("<f8")

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/#structure).
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5

# One unpacked number: the field's key (one byte for field 1), then the double.
_UNPACKED_KEY: Final = _DATA_FIELD << 3 | _FIXED64
_UNPACKED_DOUBLE: Final = np.dtype([("key", "u1"), ("value", "<f8")])


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
    def from_wire(cls, raw: bytes) -> ReceivedSubmitJob:
        """The request deserializer: `data` stays in `raw`, viewed in place."""
        try:
            return _split(raw)
        except _Unusual:
            return cls._taking_data(pb.SubmitJobRequest.FromString(raw))

    @classmethod
    def _taking_data(cls, message: pb.SubmitJobRequest) -> ReceivedSubmitJob:
        """Move `data` out of a message of our own into an array."""
        data = np.asarray(message.data, dtype=np.float64)
        message.ClearField("data")
        return cls(message, data)


def _split(raw: bytes) -> ReceivedSubmitJob:
    view = memoryview(raw)
    others = bytearray()  # the other fields, re-parsed by protobuf (they are small)
    numbers: NDArray[np.float64] | None = None
    position = 0
    while position < len(raw):
        start = position
        key, position = _varint(view, position)
        field, wire_type = key >> 3, key & 7
        if field != _DATA_FIELD:
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


def _packed_run(raw: bytes, view: memoryview, position: int) -> tuple[NDArray[np.float64], int]:
    """The packed numbers whose length is at `position`, and where they end."""
    length, position = _varint(view, position)
    if length % _PACKED_DOUBLES.itemsize or position + length > len(raw):
        raise _Unusual
    count = length // _PACKED_DOUBLES.itemsize
    return np.frombuffer(raw, dtype=_PACKED_DOUBLES, count=count, offset=position), (
        position + length
    )


def _unpacked_run(raw: bytes, start: int) -> tuple[NDArray[np.float64], int]:
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
