"""OpenTelemetry tracing, off unless the standard OTEL_* variables turn it on.

OTEL_TRACES_EXPORTER=otlp (the OTEL_EXPORTER_OTLP_* variables say where) or
console (one JSON line per span on stderr, handy in development and tests);
setting OTEL_EXPORTER_OTLP_ENDPOINT alone also means otlp. The trace context
travels from SubmitJob to the worker in the Celery message's headers.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Mapping

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

TRACER_NAME = "jobs"


def _one_line(span: ReadableSpan) -> str:
    context = span.get_span_context()
    return (
        json.dumps(
            {
                "span": span.name,
                "service": span.resource.attributes.get("service.name"),
                "trace_id": f"{context.trace_id:032x}" if context else None,
                "span_id": f"{context.span_id:016x}" if context else None,
                "parent_id": f"{span.parent.span_id:016x}" if span.parent else None,
                "attributes": dict(span.attributes or {}),
            }
        )
        + "\n"
    )


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr, formatter=_one_line)
    if name == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        return OTLPSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter {name!r} (otlp, console, none)")


def configure_tracing(service_name: str) -> None:
    """Install a tracer provider if OTEL_* asks for one; otherwise spans cost nothing."""
    default = "otlp" if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") else "none"
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", default).split(",")]
    names = [name for name in names if name and name != "none"]
    if not names:
        return
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service_name)})
    provider = TracerProvider(resource=resource)
    for name in names:
        exporter = _exporter(name)
        # Console spans are written at once, so a log read right after a call has them.
        processor = (
            SimpleSpanProcessor(exporter) if name == "console" else BatchSpanProcessor(exporter)
        )
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)


@functools.cache
def tracer() -> trace.Tracer:
    """The tracer for our spans (a no-op one while tracing is off).

    Cached: get_tracer reads the environment on every call, and every call and stream
    message asks for it. A tracer fetched before configure_tracing follows the provider
    installed later.
    """
    return trace.get_tracer(TRACER_NAME)


def trace_headers() -> dict[str, str]:
    """The current trace context as message headers (W3C traceparent), to send along a job."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def current_traceparent() -> str | None:
    """The current trace context's W3C traceparent, to record with a change or send along a job;
    None outside a valid span.

    Asked several times by every call: without a valid span (tracing off) the propagators
    write nothing, so they are not run.
    """
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    return trace_headers().get("traceparent")


def context_from(headers: Mapping[str, str]) -> Context:
    """The trace context a message carried (an empty one if it carried none)."""
    return propagate.extract(dict(headers))
