"""`defectloop trace IMAGE_ID`: what happened to this part's image, from its traces.

Every span a service opens for an image carries its id (``defectloop.image_id``), so Zipkin finds
them all: the image's own trace (upload -> validation -> storage -> ``image.captured`` ->
inference -> ``prediction.made`` -> annotation-sync's sampling decision) and the traces of work
done for it later, out of band (the Label Studio task push, the annotation's arrival). The
command prints them as trees with timings and outcomes, then a summary, and the inference
service's ``/v1/models`` says which model serves the site now.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.tree import Tree

from defectloop.common import tracing
from defectloop.common.errors import NotFoundError, TransientError

console = Console()
DEFAULT_ZIPKIN = "http://127.0.0.1:9411"
DEFAULT_INFERENCE = "http://127.0.0.1:8082"
LOOKBACK_MS = 7 * 24 * 3600 * 1000

# Tags worth a column in the tree, in this order, with a short label.
_DETAILS = (
    (tracing.ATTR_OUTCOME, ""),
    (tracing.ATTR_REASON, "reason"),
    (tracing.ATTR_MODEL_VERSION, "model"),
    (tracing.ATTR_MODEL_ROLE, "role"),
    (tracing.ATTR_DEFECTIVE, "defective"),
    (tracing.ATTR_ANNOTATOR, "annotator"),
    (tracing.ATTR_BATCH_SIZE, "batch"),
    ("http.status_code", "http"),
    ("http.response.status_code", "http"),
    ("error", "error"),
)


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    service: str
    start_us: int
    duration_us: int
    tags: dict[str, str]
    children: list[Span] = field(default_factory=list)

    @classmethod
    def from_zipkin(cls, raw: dict[str, Any]) -> Span:
        return cls(
            trace_id=raw["traceId"],
            span_id=raw["id"],
            parent_id=raw.get("parentId"),
            name=raw.get("name", "?"),
            service=(raw.get("localEndpoint") or {}).get("serviceName", "?"),
            start_us=int(raw.get("timestamp", 0)),
            duration_us=int(raw.get("duration", 0)),
            tags=dict(raw.get("tags") or {}),
        )


def fetch_traces(zipkin: str, image_id: str, *, timeout_s: float = 10.0) -> list[list[Span]]:
    """Every trace with a span tagged with ``image_id``, oldest first."""
    try:
        resp = httpx.get(
            zipkin.rstrip("/") + "/api/v2/traces",
            params={
                "annotationQuery": f"{tracing.ATTR_IMAGE}={image_id}",
                "endTs": int(time.time() * 1000),
                "lookback": LOOKBACK_MS,
                "limit": 100,
            },
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        raise TransientError(
            f"Zipkin at {zipkin} is unreachable ({type(exc).__name__})",
            hint="start the stack with `defectloop up`, or pass --zipkin / DEFECTLOOP_ZIPKIN_URL",
        ) from exc
    if resp.status_code >= 400:
        raise TransientError(f"Zipkin answered {resp.status_code}: {resp.text[:200]}")
    traces = [[Span.from_zipkin(s) for s in raw] for raw in resp.json() if raw]
    traces.sort(key=lambda spans: min(s.start_us for s in spans))
    if not traces:
        raise NotFoundError(
            f"no trace of image {image_id} in Zipkin",
            hint="check the id (ingest's 202 answer); the local Zipkin keeps traces in memory "
            "only since its start",
        )
    return traces


def build_forest(spans: list[Span]) -> list[Span]:
    """The trace's roots, each with its children in start order (a span whose parent is
    missing, e.g. not exported yet, becomes a root)."""
    by_id = {s.span_id: s for s in spans}
    roots: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start_us):
        parent = by_id.get(span.parent_id or "")
        (parent.children if parent is not None else roots).append(span)
    return roots


def _ms(us: int) -> str:
    return f"{us / 1000:.1f} ms"


def _label(span: Span, origin_us: int) -> str:
    details = []
    for key, label in _DETAILS:
        if key in span.tags:
            value = span.tags[key]
            details.append(f"{label}={value}" if label else f"[bold]{value}[/bold]")
    extra = f"  {' '.join(details)}" if details else ""
    return (
        f"[dim]+{_ms(span.start_us - origin_us):>10}[/dim]  {span.name} "
        f"[cyan]{span.service}[/cyan] [dim]{_ms(span.duration_us)}[/dim]{extra}"
    )


def _tree(node: Tree, span: Span, origin_us: int) -> None:
    branch = node.add(_label(span, origin_us))
    for child in span.children:
        _tree(branch, child, origin_us)


def summarize(spans: list[Span]) -> list[str]:
    """The image's story in a few lines, from the steps' outcomes."""
    lines = []
    by_name: dict[str, list[Span]] = {}
    for span in sorted(spans, key=lambda s: s.start_us):
        by_name.setdefault(span.name, []).append(span)
    for span in spans:
        if span.tags.get(tracing.ATTR_OUTCOME) in ("accepted", "duplicate", "rejected") and (
            span.service == "ingest"
        ):
            reason = span.tags.get(tracing.ATTR_REASON)
            lines.append(
                f"ingest: {span.tags[tracing.ATTR_OUTCOME]}"
                + (f" ({reason})" if reason else "")
                + f" at site {span.tags.get(tracing.ATTR_SITE, '?')}, "
                f"camera {span.tags.get(tracing.ATTR_CAMERA, '?')}"
            )
    for span in by_name.get("inference.image", []):
        if span.tags.get(tracing.ATTR_OUTCOME) == "predicted":
            verdict = "defective" if span.tags.get(tracing.ATTR_DEFECTIVE) == "true" else "ok"
            lines.append(
                f"inference: {verdict}, by model {span.tags.get(tracing.ATTR_MODEL_VERSION)} "
                f"(batch of {span.tags.get(tracing.ATTR_BATCH_SIZE, '?')})"
            )
        elif tracing.ATTR_REASON in span.tags:
            lines.append(f"inference: not predicted ({span.tags[tracing.ATTR_REASON]})")
    pushes = by_name.get("annotation.push", [])
    if any("error" not in p.tags for p in pushes):
        pushed = ", task pushed to Label Studio"
    elif pushes:
        pushed = ", task push failed so far (retried)"
    else:
        pushed = ""
    for span in by_name.get("annotation.sample", []):
        if span.tags.get(tracing.ATTR_OUTCOME) == "sampled":
            lines.append(f"annotation: sampled ({span.tags.get(tracing.ATTR_REASON, '?')}){pushed}")
        else:
            lines.append("annotation: not sampled")
    for span in by_name.get("annotation.arrival", []):
        if tracing.ATTR_ANNOTATOR in span.tags:
            lines.append(
                f"annotation: {span.tags.get(tracing.ATTR_OUTCOME, '?').removeprefix('annotation_')}"
                f" by {span.tags[tracing.ATTR_ANNOTATOR]}"
            )
    return lines


def serving_now(inference: str, site: str, *, timeout_s: float = 3.0) -> str | None:
    """Which champion serves ``site`` now, from the inference service (None if unreachable)."""
    try:
        body = httpx.get(inference.rstrip("/") + "/v1/models", timeout=timeout_s).json()
    except (httpx.HTTPError, ValueError):
        return None
    for row in body.get("models", []):
        if row.get("site_id") == site and row.get("role") == "champion" and row.get("serving"):
            return str(row["serving"]["model_version"])
    return None


def render(image_id: str, traces: list[list[Span]], zipkin: str, inference: str) -> None:
    everything = [s for spans in traces for s in spans]
    origin = min(s.start_us for s in everything)
    for spans in traces:
        root = Tree(
            f"[bold]trace {spans[0].trace_id}[/bold]  "
            f"[link={zipkin.rstrip('/')}/zipkin/traces/{spans[0].trace_id}]"
            f"{zipkin.rstrip('/')}/zipkin/traces/{spans[0].trace_id}[/link]"
        )
        for top in build_forest(spans):
            _tree(root, top, origin)
        console.print(root)
    console.rule(f"image {image_id}")
    for line in summarize(everything) or ["no outcome recorded yet"]:
        console.print(f"  {line}")
    site = next(
        (s.tags[tracing.ATTR_SITE] for s in everything if tracing.ATTR_SITE in s.tags), None
    )
    if site is not None:
        model = serving_now(inference, site)
        if model is not None:
            console.print(f"  site {site} is served now by model {model} (inference /v1/models)")


def register(app: typer.Typer) -> None:
    @app.command("trace")
    def trace(
        image_id: Annotated[str, typer.Argument(help="The image id ingest answered (202).")],
        zipkin: Annotated[
            str,
            typer.Option(help="Zipkin's base URL.", envvar="DEFECTLOOP_ZIPKIN_URL"),
        ] = DEFAULT_ZIPKIN,
        inference: Annotated[
            str,
            typer.Option(
                help="The inference service's base URL.", envvar="DEFECTLOOP_INFERENCE_URL"
            ),
        ] = DEFAULT_INFERENCE,
    ) -> None:
        """What happened to this image: its path through the services, timings and outcomes."""
        render(image_id, fetch_traces(zipkin, image_id), zipkin, inference)


__all__ = ["build_forest", "fetch_traces", "register", "summarize"]
