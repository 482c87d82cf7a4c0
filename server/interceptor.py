"""The one wrapper around every JobService and AdminService call: who calls (server.auth), job
id for logs, malformed and unknown-field checks, errors to gRPC statuses, and the RPC metrics.

A domain error becomes its documented status (server.errors). Anything else is a bug or a
failure nobody mapped: the client gets INTERNAL with a correlation id and nothing of the
exception (driver text can quote SQL and values), and the traceback is logged once under
that id. A call never ends UNKNOWN, which grpc.aio would send with the exception's text.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from google.rpc import code_pb2, status_pb2
from jobs.v1 import jobs_service_pb2
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from jobcore.errors import FieldViolation, InvalidJobError, JobError, UnauthenticatedError
from jobcore.logs import current_job_id
from jobcore.tracing import tracer
from server.auth import CallGuard, authorization_of
from server.conversions import reject_unknown_fields
from server.errors import abort_with, internal_status, new_correlation_id, status_for
from server.metrics import WATCH_STREAMS_OPEN, rpc_duration, rpc_requests
from server.submit_wire import (
    MalformedRequest,
    ReceivedBatch,
    ReceivedSubmitJob,
    malformed_field,
)

Context = grpc.aio.ServicerContext[Any, Any]

# Requests read other than by protobuf's FromString (see server.submit_wire).
_REQUEST_DESERIALIZERS: dict[str, Callable[[bytes], Any]] = {
    "/jobs.v1.JobService/SubmitJob": ReceivedSubmitJob.from_wire,
    "/jobs.v1.JobService/BatchSubmitJobs": ReceivedBatch.from_wire,
}
# Admits a call (server.auth.CallGuard.admit for its method), or raises why not.
_Admit = Callable[[Context], Awaitable[object]]
# The services wrapped, by the prefix of their methods' full names.
_SERVICES = {
    f"/{service.full_name}/": service
    for service in (
        jobs_service_pb2.DESCRIPTOR.services_by_name["JobService"],
        jobs_service_pb2.DESCRIPTOR.services_by_name["AdminService"],
    )
}

logger = logging.getLogger(__name__)


class JobServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary and streaming JobService and AdminService handlers alike; other services
    (health, reflection) pass through, open to all."""

    def __init__(self, guard: CallGuard) -> None:
        self._guard = guard
        # A method's wrapped handler is the same for every call: build it once.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any] | None] = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        full_name = handler_call_details.method
        if full_name in self._wrapped:
            return self._wrapped[full_name]
        handler = await continuation(handler_call_details)
        prefix = full_name[: full_name.rfind("/") + 1]
        if handler is None or prefix not in _SERVICES:
            return handler
        wrapped = _wrap(full_name, handler, self._guard)
        self._wrapped[full_name] = wrapped
        return wrapped


def _wrap(
    full_name: str, handler: grpc.RpcMethodHandler[Any, Any], guard: CallGuard
) -> grpc.RpcMethodHandler[Any, Any] | None:
    """The same handler with the per-call bookkeeping around its behaviour."""
    prefix, _, method = full_name.rpartition("/")
    deserializer = _tolerant(
        _REQUEST_DESERIALIZERS.get(full_name, handler.request_deserializer),
        _SERVICES[prefix + "/"].methods_by_name[method].input_type,
    )
    admit = functools.partial(guard.admit, full_name)
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _wrap_unary(method, admit, handler.unary_unary),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _wrap_stream(method, admit, guard, handler.unary_stream),
            request_deserializer=deserializer,
            response_serializer=handler.response_serializer,
        )
    return handler


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """A request the deserializer could not turn into a message, handed to the wrapper as is.

    grpc.aio deserializes a request before any handler runs, and a deserializer that raises ends
    the call UNKNOWN with the exception's text. So the deserializer never raises: the wrapper
    answers INVALID_ARGUMENT for a malformed message, and INTERNAL for any other failure.
    """

    violation: FieldViolation | None = None
    error: Exception | None = None


def _tolerant(deserializer: Callable[[bytes], Any] | None, message: Descriptor) -> Any:
    """`deserializer`, returning an _Undecodable instead of raising."""
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except MalformedRequest as error:
            return _Undecodable(violation=error.violation)
        except DecodeError:
            return _Undecodable(violation=malformed_field(raw, message))
        except Exception as error:  # handed on, logged and answered by the wrapper
            return _Undecodable(error=error)

    return deserialize


def _check_request(request: Any) -> None:
    """InvalidJobError if the request could not be read or carries unknown fields."""
    if isinstance(request, _Undecodable):
        if request.violation is not None:
            raise InvalidJobError([request.violation])
        raise request.error or RuntimeError("undecodable request without a cause")
    # A batch's requests are checked with the rest of their validation (JobServicer).
    reject_unknown_fields(
        request.message if isinstance(request, ReceivedSubmitJob | ReceivedBatch) else request
    )


def _start_span(span_name: str, job_id: str) -> Span:
    """A server span per call, named like the RPC; SubmitJob adds the new job's id itself.

    It is started, not made current: each wrapper decides where it is current (see _wrap_stream).
    """
    span = tracer().start_span(span_name, kind=SpanKind.SERVER)
    if job_id:
        span.set_attribute("job.id", job_id)
    return span


class _Call:
    """Bookkeeping of one call: its outcome code and duration go to the metrics at the end."""

    __slots__ = ("_started", "code", "method")

    def __init__(self, method: str, job_id: str) -> None:
        self.method = method
        self.code = "OK"
        self._started = time.perf_counter()
        # Log records of this call carry the job id it is about (each call has its own context).
        if job_id:
            current_job_id.set(job_id)

    def failed(self, error: Exception) -> status_pb2.Status:
        """The status the call ends with after `error` (an unexpected one is logged here)."""
        if isinstance(error, JobError):
            status = status_for(error)
        else:
            correlation_id = new_correlation_id()
            logger.error(
                "%s failed unexpectedly (correlation id %s)",
                self.method,
                correlation_id,
                exc_info=error,
            )
            status = internal_status(correlation_id)
        self.code = code_pb2.Code.Name(status.code)
        return status

    def interrupted(self, error: BaseException, context: Context) -> None:
        """Note how a call ended that the wrapper does not answer itself."""
        if isinstance(error, grpc.aio.AbortError):
            # The handler ended the call with a status of its own.
            code = context.code()
            self.code = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
        else:
            # CancelledError: the caller went away; GeneratorExit: grpc.aio abandoned the
            # stream at a yield (the call ended mid-write).
            self.code = "CANCELLED"

    def done(self) -> None:
        rpc_requests(self.method, self.code).inc()
        rpc_duration(self.method).observe(time.perf_counter() - self._started)


def _wrap_unary(method: str, admit: _Admit, behaviour: Any) -> Any:
    """A span with no valid context (tracing off) is not made current: attaching and detaching
    it would cost every call, and it holds no trace context for anything downstream to record
    or send (nor does it record anything to end)."""
    span_name = _span_name(method)

    async def unary(request: Any, context: Context) -> Any:
        job_id = _job_id_of(request)
        span = _start_span(span_name, job_id)
        if not span.get_span_context().is_valid:
            return await handle(request, context, job_id)
        with trace.use_span(span, end_on_exit=True):
            return await handle(request, context, job_id)

    async def handle(request: Any, context: Context, job_id: str) -> Any:
        call = _Call(method, job_id)
        try:
            # Who calls first: a stranger learns nothing, not even what is wrong with
            # the request.
            await admit(context)
            _check_request(request)
            return await behaviour(request, context)
        except grpc.aio.AbortError as error:
            call.interrupted(error, context)
            raise
        except Exception as error:
            await abort_with(context, call.failed(error))
            raise  # unreachable: abort raises
        except BaseException as error:
            call.interrupted(error, context)
            raise
        finally:
            call.done()

    return unary


def _span_name(method: str) -> str:
    return f"jobs.v1.JobService/{method}"


def _job_id_of(request: Any) -> str:
    """The job id a request is about ("" for none)."""
    job_id: str = getattr(request, "job_id", "")
    return job_id


# What a stream ends with when the guard found its credential revoked or expired.
_CREDENTIAL_ENDED = UnauthenticatedError(
    "invalid credentials: revoked or expired while the stream was open"
)


def _wrap_stream(method: str, admit: _Admit, guard: CallGuard, behaviour: Any) -> Any:
    """The span covers the whole stream but is current only while a step of the handler runs.

    grpc.aio drops a stream's generator at a `yield` when the call ends during a write (client
    cancel, broken connection) and the event loop closes it later from another task. A context
    attached across a yield would then be detached in the wrong context ("Failed to detach
    context"), so every attach and detach here happens within one step. A span that records
    nothing (tracing off) is never made current: each message of every open stream would pay
    for attaching it.
    """

    span_name = _span_name(method)

    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        job_id = _job_id_of(request)
        span = _start_span(span_name, job_id)
        call = _Call(method, job_id)
        task = asyncio.current_task()
        WATCH_STREAMS_OPEN.inc()
        try:
            with trace.use_span(span):
                await admit(context)
                _check_request(request)
            # Ended (cancelled) by the guard if its credential stops working while it is open.
            held = (
                guard.open_streams.held(authorization_of(context))
                if guard.required
                else contextlib.nullcontext()
            )
            # Closed here rather than at garbage collection, so the handler cleans up at once.
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                with held:
                    if span.is_recording():
                        while True:
                            with trace.use_span(span):
                                try:
                                    response = await anext(responses)
                                except StopAsyncIteration:
                                    break
                            yield response
                    else:
                        async for response in responses:
                            yield response
        except grpc.aio.AbortError as error:
            call.interrupted(error, context)
            raise
        except Exception as error:
            # Also after responses were sent: the stream then ends with this status.
            with trace.use_span(span):
                await abort_with(context, call.failed(error))
        except asyncio.CancelledError as error:
            if not guard.open_streams.refused(task):
                call.interrupted(error, context)
                raise
            assert task is not None
            task.uncancel()
            with trace.use_span(span):
                await abort_with(context, call.failed(_CREDENTIAL_ENDED))
        except BaseException as error:
            call.interrupted(error, context)
            raise
        finally:
            WATCH_STREAMS_OPEN.dec()
            call.done()
            span.end()

    return stream
