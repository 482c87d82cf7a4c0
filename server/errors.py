"""The one place where domain errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobcore.errors import (
    ApiKeyNotFoundError,
    BrokerUnavailableError,
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

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "jobs.v1"
INTERNAL_MESSAGE = "internal error"
# Sent with every UNAUTHENTICATED answer (RFC 6750); Envoy passes it on to REST clients.
WWW_AUTHENTICATE = 'Bearer realm="jobs"'


def _retry_delay(seconds: float) -> any_pb2.Any:
    delay = duration_pb2.Duration()
    delay.FromTimedelta(timedelta(seconds=seconds))
    return _pack(error_details_pb2.RetryInfo(retry_delay=delay))


@dataclass(frozen=True)
class _Transient:
    """How a transient error reaches clients: a retryable code, a reason, a retry hint.

    The message is fixed here rather than taken from the exception, so no driver text
    (which may quote SQL or values) can reach a client.
    """

    code: code_pb2.Code.ValueType
    reason: str
    message: str
    retry_after: timedelta


# Errors a client should retry (possibly against another replica). The first entry the
# error is an instance of wins: TransientError comes last, so a new kind of transient
# error is at least UNAVAILABLE with a retry hint, never INTERNAL.
_TRANSIENT: dict[type[TransientError], _Transient] = {
    StoreUnavailableError: _Transient(
        code_pb2.UNAVAILABLE,
        "STORE_UNAVAILABLE",
        "the job store is unavailable; retry later",
        timedelta(seconds=1),
    ),
    BrokerUnavailableError: _Transient(
        code_pb2.UNAVAILABLE,
        "BROKER_UNAVAILABLE",
        "the message broker is unavailable; retry later",
        timedelta(seconds=1),
    ),
    ServiceShuttingDownError: _Transient(
        code_pb2.UNAVAILABLE,
        "SHUTTING_DOWN",
        "the server is shutting down; call again (another replica will answer)",
        timedelta(seconds=1),
    ),
    StoreOverloadedError: _Transient(
        code_pb2.RESOURCE_EXHAUSTED,
        "STORE_OVERLOADED",
        "the job store has no connection to spare; retry later",
        timedelta(seconds=1),
    ),
    # A deadlock or serialization failure passes as soon as the other transaction ends.
    StoreConflictError: _Transient(
        code_pb2.ABORTED,
        "STORE_CONFLICT",
        "the job store aborted the change because of a concurrent one; retry it",
        timedelta(milliseconds=100),
    ),
    StoreTimeoutError: _Transient(
        code_pb2.DEADLINE_EXCEEDED,
        "STORE_TIMEOUT",
        "the job store took too long and cancelled the statement; retry later",
        timedelta(seconds=1),
    ),
    TransientError: _Transient(
        code_pb2.UNAVAILABLE,
        "TRANSIENT",
        "a dependency failed for a moment; retry later",
        timedelta(seconds=1),
    ),
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _error_info(reason: str, **metadata: str) -> any_pb2.Any:
    return _pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))


def status_for(error: JobError) -> status_pb2.Status:
    """The google.rpc.Status a client receives for a domain error."""
    for status_of in (_request_status, _access_status, _transient_status):
        status = status_of(error)
        if status is not None:
            return status
    correlation_id = new_correlation_id()
    logger.error("unmapped domain error (correlation id %s): %r", correlation_id, error)
    return internal_status(correlation_id)


def _request_status(error: JobError) -> status_pb2.Status | None:
    """The status of an error about the request or the job it names; None for any other."""
    if isinstance(error, InvalidJobError):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in error.violations
            ]
        )
        return status_pb2.Status(
            code=code_pb2.INVALID_ARGUMENT,
            message=str(error),
            details=[_error_info("INVALID_REQUEST"), _pack(bad_request)],
        )
    if isinstance(error, JobAlreadyFinishedError):
        return status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION,
            message=str(error),
            details=[
                _error_info("JOB_ALREADY_FINISHED", job_id=error.job_id, status=error.status),
                _pack(
                    error_details_pb2.PreconditionFailure(
                        violations=[
                            error_details_pb2.PreconditionFailure.Violation(
                                type="STATUS",
                                subject=f"jobs/{error.job_id}",
                                description=f"the job is {error.status}; only PENDING or IN_PROGRESS jobs can be cancelled",
                            )
                        ]
                    )
                ),
            ],
        )
    if isinstance(error, IdempotencyKeyReusedError):
        return status_pb2.Status(
            code=code_pb2.ALREADY_EXISTS,
            message=str(error),
            details=[_error_info("IDEMPOTENCY_KEY_REUSED", request_id=error.request_id)],
        )
    if isinstance(error, JobNotFoundError):
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND,
            message=str(error),
            details=[_error_info("JOB_NOT_FOUND", job_id=error.job_id)],
        )
    return None


def _transient_status(error: JobError) -> status_pb2.Status | None:
    """The status of a transient error, with when to retry; None for any other error."""
    transient = _transient(error)
    if transient is not None:
        return status_pb2.Status(
            code=transient.code,
            message=transient.message,
            details=[
                _error_info(transient.reason),
                _retry_delay(transient.retry_after.total_seconds()),
            ],
        )
    return None


def _access_status(error: JobError) -> status_pb2.Status | None:
    """The status of an error about who may call, and how much; None for any other error."""
    if isinstance(error, UnauthenticatedError):
        return status_pb2.Status(
            code=code_pb2.UNAUTHENTICATED,
            message=str(error),
            details=[_error_info("UNAUTHENTICATED")],
        )
    if isinstance(error, PermissionDeniedError):
        return status_pb2.Status(
            code=code_pb2.PERMISSION_DENIED,
            message=str(error),
            details=[_error_info("MISSING_SCOPE", scope=error.scope)],
        )
    if isinstance(error, QuotaExceededError):
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(error),
            details=[
                _error_info("QUOTA_EXCEEDED", tenant=error.tenant, limit=str(error.limit)),
                _pack(
                    error_details_pb2.QuotaFailure(
                        violations=[
                            error_details_pb2.QuotaFailure.Violation(
                                subject=f"tenants/{error.tenant}",
                                description=f"at most {error.limit} unfinished jobs",
                            )
                        ]
                    )
                ),
            ],
        )
    if isinstance(error, RateLimitedError):
        return status_pb2.Status(
            code=code_pb2.RESOURCE_EXHAUSTED,
            message=str(error),
            details=[
                _error_info("RATE_LIMITED", limit=error.limit),
                _retry_delay(error.retry_after_seconds),
            ],
        )
    if isinstance(error, ApiKeyNotFoundError):
        return status_pb2.Status(
            code=code_pb2.NOT_FOUND,
            message=str(error),
            details=[_error_info("API_KEY_NOT_FOUND", key_id=error.key_id)],
        )
    return None


def _transient(error: JobError) -> _Transient | None:
    for kind, transient in _TRANSIENT.items():
        if isinstance(error, kind):
            return transient
    return None


def new_correlation_id() -> str:
    """An id that ties an INTERNAL answer to the server's log record of its cause."""
    return uuid.uuid4().hex


def internal_status(correlation_id: str) -> status_pb2.Status:
    """The status of a failure nobody planned for: no internals, only the correlation id."""
    return status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=f"{INTERNAL_MESSAGE} (correlation id {correlation_id})",
        details=[_error_info("INTERNAL", correlation_id=correlation_id)],
    )


async def abort_with(
    context: grpc.aio.ServicerContext[Any, Any], status: status_pb2.Status
) -> None:
    """End the call with `status`, its details in grpc-status-details-bin.

    HTTP's own headers go with it where HTTP clients look for them: `www-authenticate` on
    UNAUTHENTICATED, `retry-after` (whole seconds) wherever a RetryInfo says when to retry.
    """
    converted = rpc_status.to_status(status)
    metadata = tuple(converted.trailing_metadata)
    if status.code == code_pb2.UNAUTHENTICATED:
        metadata += (("www-authenticate", WWW_AUTHENTICATE),)
    retry_after = _retry_after_seconds(status)
    if retry_after is not None:
        metadata += (("retry-after", str(retry_after)),)
    await context.abort(converted.code, converted.details, metadata)


def _retry_after_seconds(status: status_pb2.Status) -> int | None:
    """The RetryInfo delay of a status, rounded up to whole seconds (Retry-After has no less)."""
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            delay: float = info.retry_delay.ToTimedelta().total_seconds()
            return max(1, math.ceil(delay))
    return None
