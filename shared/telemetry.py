"""OpenTelemetry set-up from the standard OTEL_* environment, and W3C context over NATS headers.

Export is OTLP/HTTP (Jaeger ingests it natively) and only happens when
OTEL_EXPORTER_OTLP_ENDPOINT (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set; spans are
still created without it, so trace ids appear in logs and response headers.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.util.types import AttributeValue

log = logging.getLogger("vidmesh.telemetry")
tracer = trace.get_tracer("vidmesh")

_provider: TracerProvider | None = None


def setup(service_name: str) -> None:
    """Install the tracer provider once per process (idempotent)."""
    global _provider
    if _provider is not None or os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return
    os.environ.setdefault("OTEL_SERVICE_NAME", f"vidmesh-{service_name}")
    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; the provider
    # reads OTEL_TRACES_SAMPLER(_ARG).
    _provider = TracerProvider(resource=Resource.create({"service.namespace": "vidmesh"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(_provider)


def shutdown() -> None:
    if _provider is not None:
        _provider.shutdown()


def inject(headers: dict[str, str]) -> dict[str, str]:
    """Write the current trace context (traceparent, tracestate) into NATS headers."""
    propagate.inject(headers)
    return headers


def extract(headers: dict[str, str] | None) -> context.Context:
    return propagate.extract(headers or {})


def current_trace_id() -> str | None:
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def messaging_attributes(operation: str, subject: str, **extra: AttributeValue) -> dict[str, AttributeValue]:
    """Attributes by the OpenTelemetry messaging conventions, plus vidmesh's own."""
    attrs: dict[str, AttributeValue] = {
        "messaging.system": "nats",
        "messaging.operation.name": operation,
        "messaging.destination.name": subject,
    }
    for key, value in extra.items():
        if value is not None:
            attrs[key] = value
    return attrs


class TraceIdFilter(logging.Filter):
    """Puts the current trace id on every log record (see the log format in service.py)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = current_trace_id() or "-"
        return True
