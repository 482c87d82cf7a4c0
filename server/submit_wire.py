"""SubmitJob's request read from the wire with its numbers left where they arrived.

Protobuf parses a 1,000,000-number request into an 8 MB repeated field that then has to be
copied again into the array the job is validated and stored from. A `repeated double` sent
packed (proto3 encoders do by default) is already that array: little-endian float64, 8
bytes a number. So the one `data` field is taken as a read-only view of the received bytes
and only the few other fields go through protobuf. Anything else (unpacked or split `data`,
a malformed message) takes protobuf's own path, with its errors; Envoy's JSON transcoder
sends `data` unpacked, so REST submissions take that path. Measured per request
(parse, validate, pack): 16 vs 19 us for 3 numbers, 18 vs 128 us for 8,000.
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


class _Unusual(Exception):
    """The request is not a plain packed one: let protobuf parse (or reject) all of it."""


@dataclass(frozen=True, slots=True)
class ReceivedSubmitJob:
    """A SubmitJobRequest as the servicer gets it: `data` as an array, the rest as protobuf."""

    message: pb.SubmitJobRequest  # every field but `data` (which is left empty)
    data: NDArray[np.float64]

    @classmethod
    def from_message(cls, request: pb.SubmitJobRequest) -> ReceivedSubmitJob:
        """Split an already parsed request (one copy of its numbers)."""
        data = np.asarray(request.data, dtype=np.float64)
        message = pb.SubmitJobRequest()
        message.CopyFrom(request)
        message.ClearField("data")
        return cls(message, data)

    @classmethod
    def from_wire(cls, raw: bytes) -> ReceivedSubmitJob:
        """The request deserializer: packed `data` stays in `raw`, viewed in place."""
        try:
            return _split(raw)
        except _Unusual:
            return cls.from_message(pb.SubmitJobRequest.FromString(raw))


def _split(raw: bytes) -> ReceivedSubmitJob:
    view = memoryview(raw)
    others = bytearray()  # the other fields, re-parsed by protobuf (they are small)
    data: tuple[int, int] | None = None  # (offset, byte length) of the packed numbers
    position = 0
    while position < len(raw):
        start = position
        key, position = _varint(view, position)
        field, wire_type = key >> 3, key & 7
        if field == _DATA_FIELD:
            if wire_type != _LENGTH_DELIMITED or data is not None:
                raise _Unusual  # unpacked (Envoy's transcoder) or split `data`
            length, position = _varint(view, position)
            if length % _PACKED_DOUBLES.itemsize or position + length > len(raw):
                raise _Unusual
            data = (position, length)
            position += length
            continue
        position = _skip(view, position, wire_type)
        others += view[start:position]
    if position != len(raw):
        raise _Unusual
    message = pb.SubmitJobRequest.FromString(bytes(others))
    if data is None:
        return ReceivedSubmitJob(message, np.empty(0, dtype=np.float64))
    offset, length = data
    numbers = np.frombuffer(
        raw, dtype=_PACKED_DOUBLES, count=length // _PACKED_DOUBLES.itemsize, offset=offset
    )
    return ReceivedSubmitJob(message, numbers)


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
