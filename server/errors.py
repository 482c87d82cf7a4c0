"""The one place where domain errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from jobcore.errors import (
    BrokerUnavailableError,
    IdempotencyKeyReusedError,
    InvalidJobError,
    JobAlreadyFinishedError,
    JobError,
    JobNotFoundError,
    ServiceShuttingDownError,
    StoreUnavailableError,
)

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "jobs.v1"
# Errors a client should retry later (possibly against another replica), with their reasons.
_UNAVAILABLE_REASONS: dict[type[JobError], str] = {
    StoreUnavailableError: "STORE_UNAVAILABLE",
    BrokerUnavailableError: "BROKER_UNAVAILABLE",
    ServiceShuttingDownError: "SHUTTING_DOWN",
}


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _error_info(reason: str, **metadata: str) -> any_pb2.Any:
    return _pack(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))


def status_for(error: JobError) -> status_pb2.Status:
    """The google.rpc.Status a client receives for a domain error."""
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
    reason = _UNAVAILABLE_REASONS.get(type(error))
    if reason is not None:
        return status_pb2.Status(
            code=code_pb2.UNAVAILABLE,
            message=f"{error}; retry later",
            details=[
                _error_info(reason),
                _pack(error_details_pb2.RetryInfo(retry_delay={"seconds": 1})),
            ],
        )
    logger.error("unmapped domain error: %r", error)
    return status_pb2.Status(
        code=code_pb2.INTERNAL, message="internal error", details=[_error_info("INTERNAL")]
    )


async def abort_with(context: grpc.aio.ServicerContext[Any, Any], error: JobError) -> None:
    """End the call with the status for `error`, details in grpc-status-details-bin."""
    status = rpc_status.to_status(status_for(error))
    await context.abort(status.code, status.details, status.trailing_metadata)
