"""OpenTelemetry tracing: OTLP when an endpoint is set, a JSON-lines file otherwise.

The W3C ``traceparent`` travels in Kafka headers (FastStream's telemetry middleware injects it on
publish and extracts it on consume), so a consumer's span is a child of the producer's span.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from pathlib import Path

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)


class JsonLinesSpanExporter(SpanExporter):
    """Appends one compact JSON object per finished span to a file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = []
        for span in spans:
            ctx = span.get_span_context()
            if ctx is None:
                continue
            parent = span.parent
            lines.append(
                json.dumps(
                    {
                        "name": span.name,
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                        "parent_span_id": format(parent.span_id, "016x") if parent else None,
                        "kind": span.kind.name,
                        "service": span.resource.attributes.get("service.name"),
                        "start_ns": span.start_time,
                        "end_ns": span.end_time,
                        "attributes": {k: str(v) for k, v in (span.attributes or {}).items()},
                    }
                )
            )
        with self._lock, self._path.open("a") as fh:
            fh.writelines(line + "\n" for line in lines)
        return SpanExportResult.SUCCESS


def build_tracer_provider(
    service: str,
    *,
    otlp_endpoint: str | None = None,
    trace_file: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A tracer provider for one service; not installed globally, passed to what needs it."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces"))
        )
    elif trace_file:
        provider.add_span_processor(BatchSpanProcessor(JsonLinesSpanExporter(Path(trace_file))))
    return provider
