"""OpenTelemetry tracing: one trace per image, exported to Zipkin, OTLP or a JSON-lines file.

The W3C ``traceparent`` travels in Kafka headers (FastStream's telemetry middleware injects it on
publish and extracts it on consume), so a consumer's span is a child of the producer's span. A
batch consumer is the exception: FastStream starts one fresh span per batch, linked to every
record's trace. :class:`ItemSpans` puts each item back into its own trace (a span whose parent is
the item's ``traceparent``, linked to the batch span), so an image's trace goes on through
inference instead of stopping at the batch.

Each service has its own :class:`TracerProvider` (several services may share a test process);
:func:`tracer_provider_for` builds it once per service settings and everything in the service
(broker middleware, HTTP server spans, handlers) takes its tracer from there.

Exporters, by setting (one at a time, first match wins): ``zipkin_endpoint`` (the local stack's
Zipkin server, JSON v2), ``otlp_endpoint`` (OTLP/HTTP: the Collector in ``compose.yaml``),
``trace_file`` (JSON lines, one span a line).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.trace import Link as Link  # re-exported, like Span and Tracer
from opentelemetry.trace import Span as Span  # re-exported: services import only this module
from opentelemetry.trace import SpanContext as SpanContext
from opentelemetry.trace import Status, StatusCode
from opentelemetry.trace import Tracer as Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from defectloop.common.logging import get_logger

# Span attribute names (defectloop's own; OpenTelemetry's semantic conventions cover HTTP and
# messaging). `defectloop trace` and the dashboards read these names: change them together.
ATTR_SITE = "defectloop.site_id"
ATTR_CAMERA = "defectloop.camera_id"
ATTR_IMAGE = "defectloop.image_id"
ATTR_MODEL_VERSION = "defectloop.model_version"
ATTR_MODEL_ROLE = "defectloop.model_role"
ATTR_BATCH_SIZE = "defectloop.batch_size"
ATTR_OUTCOME = "defectloop.outcome"
"""What happened at this step: accepted, duplicate, rejected, predicted, sampled, ..."""
ATTR_REASON = "defectloop.reason"
"""The machine-readable reason of a rejection, a dead letter or a sampling decision."""
ATTR_DEFECTIVE = "defectloop.defective"
ATTR_ANNOTATOR = "defectloop.annotator"
ATTR_JOB_ID = "defectloop.job_id"
ATTR_EVENT_ID = "defectloop.event_id"
ATTR_REPUBLISH = "defectloop.republish"
"""True on a publish by an outbox's republisher (not by the request that recorded the event)."""

_PROPAGATOR = TraceContextTextMapPropagator()

# How long a finished span waits before export: short, so a trace shows in Zipkin within a
# second of the work (the default, 5 s, makes `defectloop trace` right after an upload miss it).
EXPORT_DELAY_MS = 500


class _TracingSettings(Protocol):
    @property
    def service_name(self) -> str: ...
    @property
    def otlp_endpoint(self) -> str | None: ...
    @property
    def zipkin_endpoint(self) -> str | None: ...
    @property
    def trace_file(self) -> str | None: ...


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
                        "links": [
                            {
                                "trace_id": format(link.context.trace_id, "032x"),
                                "span_id": format(link.context.span_id, "016x"),
                            }
                            for link in span.links
                        ],
                    }
                )
            )
        with self._lock, self._path.open("a") as fh:
            fh.writelines(line + "\n" for line in lines)
        return SpanExportResult.SUCCESS


class GuardedExporter(SpanExporter):
    """A network exporter whose failures (the trace backend down or restarting) cost one warning
    line a minute, not a traceback per batch: traces are lost meanwhile, the service is not."""

    def __init__(self, inner: SpanExporter, *, target: str, quiet_s: float = 60.0) -> None:
        self._inner = inner
        self._target = target
        self._quiet_s = quiet_s
        self._last_warning = -float("inf")
        self._dropped = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            return self._inner.export(spans)
        except Exception as exc:
            self._dropped += len(spans)
            now = time.monotonic()
            if now - self._last_warning >= self._quiet_s:
                self._last_warning = now
                get_logger(__name__).warning(
                    "trace_export_failed",
                    target=self._target,
                    dropped_spans=self._dropped,
                    error=f"{type(exc).__name__}: {str(exc)[:200]}",
                )
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)


def build_tracer_provider(
    service: str,
    *,
    otlp_endpoint: str | None = None,
    zipkin_endpoint: str | None = None,
    trace_file: str | None = None,
    exporter: SpanExporter | None = None,
) -> TracerProvider:
    """A tracer provider for one service; not installed globally, passed to what needs it."""
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    if zipkin_endpoint:
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        zipkin = ZipkinExporter(endpoint=zipkin_endpoint, timeout=5)
        provider.add_span_processor(
            BatchSpanProcessor(
                GuardedExporter(zipkin, target=zipkin_endpoint),
                schedule_delay_millis=EXPORT_DELAY_MS,
            )
        )
    elif otlp_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(
            BatchSpanProcessor(
                OTLPSpanExporter(endpoint=f"{otlp_endpoint.rstrip('/')}/v1/traces"),
                schedule_delay_millis=EXPORT_DELAY_MS,
            )
        )
    elif trace_file:
        provider.add_span_processor(
            BatchSpanProcessor(
                JsonLinesSpanExporter(Path(trace_file)), schedule_delay_millis=EXPORT_DELAY_MS
            )
        )
    return provider


_providers: dict[tuple[str, str | None, str | None, str | None], TracerProvider] = {}
_providers_lock = threading.Lock()


def tracer_provider_for(settings: _TracingSettings) -> TracerProvider:
    """The service's tracer provider, built once per (service, exporter settings) in a process."""
    key = (
        settings.service_name,
        settings.zipkin_endpoint,
        settings.otlp_endpoint,
        settings.trace_file,
    )
    with _providers_lock:
        provider = _providers.get(key)
        if provider is None:
            provider = build_tracer_provider(
                settings.service_name,
                otlp_endpoint=settings.otlp_endpoint,
                zipkin_endpoint=settings.zipkin_endpoint,
                trace_file=settings.trace_file,
            )
            _providers[key] = provider
        return provider


def tracer_for(settings: _TracingSettings, name: str = "defectloop") -> Tracer:
    """A tracer of the service's provider (for the spans a service opens itself)."""
    return tracer_provider_for(settings).get_tracer(name)


def headers_context(headers: Iterable[tuple[str, bytes | None]] | Mapping[str, str]) -> Context:
    """The trace context in Kafka record headers (``traceparent``), or an empty context."""
    if isinstance(headers, Mapping):
        carrier = dict(headers)
    else:
        carrier = {k: v.decode("utf-8", "replace") for k, v in headers if v is not None}
    return _PROPAGATOR.extract(carrier)


def traceparent(span: Span | None = None) -> str | None:
    """The W3C ``traceparent`` of ``span`` (default: the current one), or None outside a span."""
    carrier: dict[str, str] = {}
    ctx = trace.set_span_in_context(span) if span is not None else None
    _PROPAGATOR.inject(carrier, context=ctx)
    return carrier.get("traceparent")


def trace_id_of(span: Span | None = None) -> str | None:
    """The hex trace id of ``span`` (default: the current one), or None outside a span."""
    ctx = (span or trace.get_current_span()).get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else None


def current_span() -> Span:
    """The span of the work in progress (an invalid, non-recording span outside any)."""
    return trace.get_current_span()


@contextmanager
def in_span(span: Span, *, end: bool = False) -> Iterator[None]:
    """Make ``span`` current (ending it on exit only if ``end``): what is published or opened
    here joins its trace."""
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)
        if end:
            span.end()


def mark_failed(span: Span, reason: str, detail: str | None = None) -> None:
    """Set an error status and the reason on ``span``."""
    span.set_attribute(ATTR_REASON, reason)
    span.set_status(Status(StatusCode.ERROR, detail or reason))


class ItemSpans:
    """One span per item of a batch, each in its item's own trace, linked to the batch's span.

    ``parents`` are the items' trace contexts (from their records' headers, see
    :func:`headers_context`); an item without one starts a trace of its own. ``keys`` (e.g. the
    image ids) find an item's span again with :meth:`index_of`. The batch span (the
    current span when this is built: FastStream's consumer span) links to nothing here, but each
    item span links to it, so the shared work of the batch is one click away from every trace.
    """

    def __init__(
        self,
        tracer: Tracer,
        name: str,
        parents: Sequence[Context],
        attributes: Sequence[Mapping[str, Any]] | None = None,
        keys: Sequence[str] | None = None,
    ) -> None:
        batch = trace.get_current_span()
        links = [Link(batch.get_span_context())] if batch.get_span_context().is_valid else []
        self.tracer = tracer
        self.spans: list[Span] = [
            tracer.start_span(
                name,
                context=parent,
                kind=trace.SpanKind.INTERNAL,
                links=links,
                attributes=dict(attributes[i]) if attributes else None,
            )
            for i, parent in enumerate(parents)
        ]
        self._index = {key: i for i, key in enumerate(keys or ())}

    def index_of(self, key: str) -> int | None:
        return self._index.get(key)

    def __getitem__(self, index: int) -> Span:
        return self.spans[index]

    def __len__(self) -> int:
        return len(self.spans)

    def child(
        self,
        index: int,
        name: str,
        *,
        start_ns: int,
        end_ns: int,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        """A finished child span of item ``index`` for a phase timed by the batch (its decode,
        its model run): the phase's real start and end, in the item's own trace."""
        span = self.tracer.start_span(
            name,
            context=trace.set_span_in_context(self.spans[index]),
            start_time=start_ns,
            attributes=dict(attributes) if attributes else None,
        )
        span.end(end_time=end_ns)

    def end(self) -> None:
        for span in self.spans:
            span.end()
