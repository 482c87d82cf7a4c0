"""Domain errors map to canonical gRPC codes with google.rpc details, in one place."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, TypeVar

import pytest
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2

from jobcore.errors import (
    ApiKeyNotFoundError,
    BrokerUnavailableError,
    FieldViolation,
    IdempotencyKeyReusedError,
    InvalidJobError,
    JobAlreadyFinishedError,
    JobError,
    JobNotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    ServiceShuttingDownError,
    StoreConflictError,
    StoreOverloadedError,
    StoreTimeoutError,
    StoreUnavailableError,
    TransientError,
    UnauthenticatedError,
)
from server.errors import _retry_after_seconds, internal_status, new_correlation_id, status_for

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


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (StoreUnavailableError("db down"), code_pb2.UNAVAILABLE, "STORE_UNAVAILABLE"),
        (BrokerUnavailableError("redis down"), code_pb2.UNAVAILABLE, "BROKER_UNAVAILABLE"),
        (ServiceShuttingDownError("draining"), code_pb2.UNAVAILABLE, "SHUTTING_DOWN"),
        (StoreOverloadedError("pool"), code_pb2.RESOURCE_EXHAUSTED, "STORE_OVERLOADED"),
        (StoreConflictError("deadlock"), code_pb2.ABORTED, "STORE_CONFLICT"),
        (StoreTimeoutError("statement_timeout"), code_pb2.DEADLINE_EXCEEDED, "STORE_TIMEOUT"),
        (TransientError("something passing"), code_pb2.UNAVAILABLE, "TRANSIENT"),
    ],
)
def test_every_transient_error_has_a_retryable_code_and_a_retry_hint(
    error: TransientError, code: int, reason: str
) -> None:
    status = status_for(error)

    assert status.code == code
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == (reason, "jobs.v1")
    [retry] = _unpack(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() > timedelta(0)


def test_a_new_kind_of_transient_error_is_unavailable_not_internal() -> None:
    class StoreHiccupError(StoreUnavailableError):
        pass

    status = status_for(StoreHiccupError("a new kind"))

    assert status.code == code_pb2.UNAVAILABLE
    assert _unpack(status, error_details_pb2.RetryInfo)


@pytest.mark.parametrize(
    "error_type",
    [
        StoreUnavailableError,
        StoreOverloadedError,
        StoreConflictError,
        StoreTimeoutError,
        BrokerUnavailableError,
        TransientError,
    ],
)
def test_transient_messages_never_carry_the_exception_text(
    error_type: type[TransientError],
) -> None:
    driver_text = 'deadlock detected: UPDATE jobs SET status = "x" WHERE id = 42'

    status = status_for(error_type(driver_text))

    assert "jobs SET" not in status.message
    assert "retry" in status.message
    assert all(b"jobs SET" not in detail.value for detail in status.details)


def test_retry_hints_of_conflicts_are_shorter_than_of_outages() -> None:
    def delay(error: JobError) -> timedelta:
        [retry] = _unpack(status_for(error), error_details_pb2.RetryInfo)
        retry_delay: timedelta = retry.retry_delay.ToTimedelta()
        return retry_delay

    assert delay(StoreConflictError("deadlock")) < delay(StoreUnavailableError("down"))


def test_unmapped_domain_error_is_internal_with_a_correlation_id() -> None:
    class NobodyMappedThisError(JobError):
        pass

    status = status_for(NobodyMappedThisError("private detail"))

    assert status.code == code_pb2.INTERNAL
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert info.reason == "INTERNAL"
    correlation_id = info.metadata["correlation_id"]
    assert status.message == f"internal error (correlation id {correlation_id})"
    assert "private detail" not in status.message


def test_internal_status_names_only_the_correlation_id() -> None:
    first, second = new_correlation_id(), new_correlation_id()

    status = internal_status(first)

    assert first != second
    assert status.code == code_pb2.INTERNAL
    assert status.message == f"internal error (correlation id {first})"
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert dict(info.metadata) == {"correlation_id": first}


def test_existing_mappings_keep_their_codes() -> None:
    assert status_for(JobAlreadyFinishedError("01a2", "SUCCESS")).code == (
        code_pb2.FAILED_PRECONDITION
    )
    assert status_for(IdempotencyKeyReusedError("key")).code == code_pb2.ALREADY_EXISTS


def test_callers_without_credentials_or_scope_are_unauthenticated_or_denied() -> None:
    unauthenticated = status_for(UnauthenticatedError("invalid credentials: revoked"))
    denied = status_for(PermissionDeniedError("jobs.write"))

    assert unauthenticated.code == code_pb2.UNAUTHENTICATED
    assert unauthenticated.message == "invalid credentials: revoked"
    assert denied.code == code_pb2.PERMISSION_DENIED
    [info] = _unpack(denied, error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == ("MISSING_SCOPE", {"scope": "jobs.write"})


def test_a_tenant_over_its_quota_gets_a_quota_failure() -> None:
    status = status_for(QuotaExceededError("acme", 100_000))

    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    [failure] = _unpack(status, error_details_pb2.QuotaFailure)
    [violation] = failure.violations
    assert violation.subject == "tenants/acme"
    assert "100000" in violation.description
    assert not _unpack(status, error_details_pb2.RetryInfo)


def test_a_caller_over_its_rate_is_told_when_to_retry() -> None:
    status = status_for(RateLimitedError("10/second", 0.4))

    assert status.code == code_pb2.RESOURCE_EXHAUSTED
    [retry] = _unpack(status, error_details_pb2.RetryInfo)
    assert retry.retry_delay.ToTimedelta() == timedelta(seconds=0.4)
    # HTTP's Retry-After has whole seconds only: never 0, which would invite an instant retry.
    assert _retry_after_seconds(status) == 1
    assert _retry_after_seconds(status_for(RateLimitedError("1/minute", 41.2))) == 42
    assert _retry_after_seconds(status_for(JobNotFoundError("x"))) is None


def test_an_unknown_api_key_id_is_not_found() -> None:
    status = status_for(ApiKeyNotFoundError("0190"))

    assert status.code == code_pb2.NOT_FOUND
    [info] = _unpack(status, error_details_pb2.ErrorInfo)
    assert (info.reason, dict(info.metadata)) == ("API_KEY_NOT_FOUND", {"key_id": "0190"})
