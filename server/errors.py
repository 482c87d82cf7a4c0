"""The one place where domain errors become gRPC statuses with google.rpc details."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
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
from jobcore.logs import current_job_id
from server.conversions import reject_unknown_fields

logger = logging.getLogger(__name__)

ERROR_DOMAIN = "jobs.v1"
_SERVICE_PREFIX = "/jobs.v1.JobService/"
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


class DomainErrorInterceptor(grpc.aio.ServerInterceptor):
    """Maps JobError raised by any JobService method to its status, for unary and streaming calls.

    It also rejects requests with unknown fields first, so no method can forget to.
    """

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None or not handler_call_details.method.startswith(_SERVICE_PREFIX):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _note_job_id(request: Any) -> None:
    """Log records of this call carry the job id it is about (each call has its own context)."""
    job_id = getattr(request, "job_id", "")
    if job_id:
        current_job_id.set(job_id)


def _wrap_unary(behaviour: Any) -> Any:
    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            _note_job_id(request)
            reject_unknown_fields(request)
            return await behaviour(request, context)
        except JobError as error:
            await abort_with(context, error)
            raise  # unreachable: abort raises

    return unary


def _wrap_stream(behaviour: Any) -> Any:
    async def stream(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        try:
            _note_job_id(request)
            reject_unknown_fields(request)
            async for response in behaviour(request, context):
                yield response
        except JobError as error:
            await abort_with(context, error)

    return stream
