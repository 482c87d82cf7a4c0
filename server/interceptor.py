"""The one wrapper around every JobService call: job id for logs, unknown-field check,
domain errors to gRPC statuses, and the RPC metrics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import grpc
from google.rpc import code_pb2
from opentelemetry.trace import Span, SpanKind

from jobcore.errors import JobError
from jobcore.logs import current_job_id
from jobcore.tracing import tracer
from server.conversions import reject_unknown_fields
from server.errors import abort_with, status_for
from server.metrics import RPC_DURATION, RPC_REQUESTS, WATCH_STREAMS_OPEN

_SERVICE_PREFIX = "/jobs.v1.JobService/"
Context = grpc.aio.ServicerContext[Any, Any]


class JobServiceInterceptor(grpc.aio.ServerInterceptor):
    """Wraps unary and streaming JobService handlers alike; other services pass through."""

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        full_name = handler_call_details.method
        if handler is None or not full_name.startswith(_SERVICE_PREFIX):
            return handler
        method = full_name.removeprefix(_SERVICE_PREFIX)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _span(method: str, request: Any) -> AbstractContextManager[Span]:
    """A server span per call, named like the RPC; SubmitJob adds the new job's id itself."""
    span = tracer().start_as_current_span(f"jobs.v1.JobService/{method}", kind=SpanKind.SERVER)
    job_id = getattr(request, "job_id", "")
    if job_id:
        return _with_attribute(span, "job.id", job_id)
    return span


@contextlib.contextmanager
def _with_attribute(
    span_manager: AbstractContextManager[Span], key: str, value: str
) -> Iterator[Span]:
    with span_manager as span:
        span.set_attribute(key, value)
        yield span


class _Call:
    """Bookkeeping of one call: its outcome code and duration go to the metrics at the end."""

    def __init__(self, method: str, request: Any) -> None:
        self.method = method
        self.code = "OK"
        self._started = time.perf_counter()
        # Log records of this call carry the job id it is about (each call has its own context).
        job_id = getattr(request, "job_id", "")
        if job_id:
            current_job_id.set(job_id)

    def failed(self, error: BaseException) -> None:
        if isinstance(error, JobError):
            self.code = code_pb2.Code.Name(status_for(error).code)
        elif isinstance(error, asyncio.CancelledError):
            self.code = "CANCELLED"
        else:
            self.code = "UNKNOWN"

    def done(self) -> None:
        RPC_REQUESTS.labels(self.method, self.code).inc()
        RPC_DURATION.labels(self.method).observe(time.perf_counter() - self._started)


def _wrap_unary(method: str, behaviour: Any) -> Any:
    async def unary(request: Any, context: Context) -> Any:
        with _span(method, request):
            call = _Call(method, request)
            try:
                reject_unknown_fields(request)
                return await behaviour(request, context)
            except JobError as error:
                call.failed(error)
                await abort_with(context, error)
                raise  # unreachable: abort raises
            except BaseException as error:
                call.failed(error)
                raise
            finally:
                call.done()

    return unary


def _wrap_stream(method: str, behaviour: Any) -> Any:
    async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
        with _span(method, request):
            call = _Call(method, request)
            WATCH_STREAMS_OPEN.inc()
            try:
                reject_unknown_fields(request)
                async for response in behaviour(request, context):
                    yield response
            except JobError as error:
                call.failed(error)
                await abort_with(context, error)
            except BaseException as error:
                call.failed(error)
                raise
            finally:
                WATCH_STREAMS_OPEN.dec()
                call.done()

    return stream
