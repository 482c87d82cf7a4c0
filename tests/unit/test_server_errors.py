"""Domain errors map to canonical gRPC codes with google.rpc details, in one place."""

from __future__ import annotations

from typing import Any, TypeVar

from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2

from jobcore.errors import (
    BrokerUnavailableError,
    FieldViolation,
    InvalidJobError,
    JobNotFoundError,
    ServiceShuttingDownError,
    StoreUnavailableError,
)
from server.errors import status_for

M = TypeVar("M", bound=Message)


def _unpack(status: Any, message_type: type[M]) -> list[M]:
    """The details of `status` that are of `message_type`."""
    found = []
    for detail in status.details:
        if detail.Is(message_type.DESCRIPTOR):
            message = message_type()
            detail.Unpack(message)
            found.append(message)
    return found


def test_invalid_request_carries_every_field_violation() -> None:
    error = InvalidJobError(
        [
            FieldViolation("data[2]", "must be a finite number"),
            FieldViolation("operation", "unknown"),
        ]
    )

    status = status_for(error)

    assert status.code == code_pb2.INVALID_ARGUMENT
    assert "data[2]" in status.message
    [bad_request] = _unpack(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("data[2]", "must be a finite number"),
        ("operation", "unknown"),
    ]
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INVALID_REQUEST", "jobs.v1")


def test_not_found_names_the_job() -> None:
    status = status_for(JobNotFoundError("01a2"))

    assert status.code == code_pb2.NOT_FOUND
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert info.reason == "JOB_NOT_FOUND"
    assert dict(info.metadata) == {"job_id": "01a2"}


def test_outages_are_unavailable_with_a_retry_hint() -> None:
    for error, reason in (
        (StoreUnavailableError("db down"), "STORE_UNAVAILABLE"),
        (BrokerUnavailableError("redis down"), "BROKER_UNAVAILABLE"),
        (ServiceShuttingDownError("draining"), "SHUTTING_DOWN"),
    ):
        status = status_for(error)

        assert status.code == code_pb2.UNAVAILABLE
        [info] = _unpack(status, error_details_pb2.ErrorInfo)
        assert info.reason == reason
        assert _unpack(status, error_details_pb2.RetryInfo)
