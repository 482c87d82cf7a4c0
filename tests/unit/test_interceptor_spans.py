"""The interceptor's span around a server stream, driven the way grpc.aio drives a handler.

grpc.aio iterates the handler's generator in the call's task and, when the call ends during a
write (client cancel, broken connection), drops it at a `yield`; the event loop then closes it
from another task. No context may be attached across a yield, or OpenTelemetry logs
"Failed to detach context" for every such stream.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import grpc
import pytest
from jobs.v1 import jobs_service_pb2 as pb
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server import interceptor
from server.auth import CallGuard
from tests.eventually import eventually

Handler = Callable[[Any, Any], AsyncIterator[pb.WatchJobResponse]]


@dataclass
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """Spans the interceptor ends, kept in memory (the global tracer provider is left alone)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(interceptor, "tracer", lambda: provider.get_tracer("test"))
    return exporter


class _Watch:
    """A WatchJob behaviour that records which span is current at each step."""

    def __init__(self, *, messages: int, then_wait: bool) -> None:
        self.messages = messages
        self.then_wait = then_wait
        self.current_spans: list[trace.Span] = []
        self.waiting = asyncio.Event()

    async def __call__(self, request: Any, context: Any) -> AsyncIterator[pb.WatchJobResponse]:
        for sequence in range(1, self.messages + 1):
            self.current_spans.append(trace.get_current_span())
            yield pb.WatchJobResponse(sequence=sequence)
        if self.then_wait:
            self.waiting.set()
            await asyncio.Event().wait()


async def _wrapped(behaviour: _Watch) -> Handler:
    async def continuation(details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_stream_rpc_method_handler(behaviour)

    guard = CallGuard(api_keys=None, jwts=None, rate_limiter=None)  # AUTH_MODE=none
    handler = await interceptor.JobServiceInterceptor(guard).intercept_service(
        continuation, _CallDetails("/jobs.v1.JobService/WatchJob")
    )
    assert handler is not None
    return cast(Handler, handler.unary_stream)


def _detach_failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "Failed to detach" in r.getMessage()]


async def _ended(spans: InMemorySpanExporter) -> None:
    """Wait for the loop's finalizer task to close the dropped generator and end its span."""

    async def finished() -> int:
        return len(spans.get_finished_spans())

    await eventually(finished, until=lambda count: count >= 1, timeout_seconds=5)


async def _run_call(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run `body` in a task of its own, as grpc.aio runs each call."""
    await asyncio.create_task(body())


async def test_a_stream_that_ends_has_one_span_current_at_every_step(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = str(uuid.uuid4())
    behaviour = _Watch(messages=3, then_wait=False)
    stream = await _wrapped(behaviour)

    async def call() -> None:
        received = [r async for r in stream(pb.WatchJobRequest(job_id=job_id), None)]
        assert [r.sequence for r in received] == [1, 2, 3]

    with caplog.at_level(logging.WARNING):
        await _run_call(call)

    [span] = spans.get_finished_spans()
    assert span.name == "jobs.v1.JobService/WatchJob"
    assert span.kind is trace.SpanKind.SERVER
    assert span.attributes == {"job.id": job_id}
    assert {s.get_span_context().span_id for s in behaviour.current_spans} == {span.context.span_id}
    assert _detach_failures(caplog) == []


async def test_a_stream_dropped_mid_write_is_closed_without_detach_errors(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = str(uuid.uuid4())
    stream = await _wrapped(_Watch(messages=5, then_wait=False))

    async def call() -> None:
        responses = stream(pb.WatchJobRequest(job_id=job_id), None)
        await anext(responses)
        await anext(responses)
        # Like grpc.aio when a write fails: the generator is dropped at a yield, unclosed,
        # and the event loop's finalizer closes it in another task.
        del responses

    with caplog.at_level(logging.WARNING):
        await _run_call(call)
        await _ended(spans)

    [span] = spans.get_finished_spans()
    assert span.attributes == {"job.id": job_id}
    assert _detach_failures(caplog) == []


async def test_a_stream_cancelled_while_waiting_ends_its_span_without_detach_errors(
    spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    behaviour = _Watch(messages=1, then_wait=True)
    stream = await _wrapped(behaviour)

    async def call() -> None:
        async for _response in stream(pb.WatchJobRequest(job_id=str(uuid.uuid4())), None):
            pass

    with caplog.at_level(logging.WARNING):
        task = asyncio.create_task(call())
        await behaviour.waiting.wait()
        task.cancel()  # what grpc.aio does when the client cancels
        with pytest.raises(asyncio.CancelledError):
            await task

    assert len(spans.get_finished_spans()) == 1
    assert _detach_failures(caplog) == []
