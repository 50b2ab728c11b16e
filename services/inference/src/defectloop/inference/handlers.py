"""Kafka adapters: a batch of ``image.captured`` in, ``prediction.made`` (and DLQ entries) out.

The work is in :mod:`defectloop.inference.pipeline`; here the batch waits for the model table to
be ready, takes one snapshot of it, publishes the predictions concurrently (in order, then awaits
every acknowledgement) and returns the per-item failures, which
:func:`defectloop.common.kafka_batch.batch_event_subscriber` dead-letters before committing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream.kafka import KafkaBroker

from defectloop.common import topics, tracing
from defectloop.common.blobstore import BlobStore
from defectloop.common.events import Event, ImageCaptured, ModelRole, PredictionMade, utc_now
from defectloop.common.kafka import publish_events
from defectloop.common.kafka_batch import BatchItem, Rejection, batch_event_subscriber
from defectloop.common.logging import get_logger
from defectloop.common.metrics import BATCH_SIZE, END_TO_END_LATENCY, PREDICTIONS
from defectloop.common.tracing import Span, Tracer
from defectloop.inference.pipeline import BatchResult, Executors, predict_events
from defectloop.inference.router import ModelRouter
from defectloop.inference.settings import InferenceSettings

log = get_logger(__name__)


@dataclass(slots=True)
class Stats:
    """Counters of this process (``GET /v1/models`` shows them)."""

    batches: int = 0
    images: int = 0
    predictions: int = 0
    dead_lettered: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int, predictions: int, failures: int) -> None:
        self.batches += 1
        self.images += size
        self.predictions += predictions
        self.dead_lettered += failures
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1

    def describe(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "images": self.images,
            "predictions": self.predictions,
            "dead_lettered": self.dead_lettered,
            "batch_sizes": dict(sorted(self.batch_sizes.items())),
        }


class AssignmentTracker(ConsumerRebalanceListener):  # type: ignore[misc]
    """The ``image.captured`` partitions this process owns, with a way to await a change."""

    def __init__(self) -> None:
        self.partitions: frozenset[TopicPartition] = frozenset()
        self._changed: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def _set(self, partitions: frozenset[TopicPartition]) -> None:
        self.partitions = partitions
        cond = self._condition()
        async with cond:
            cond.notify_all()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._set(self.partitions - revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._set(self.partitions | frozenset(assigned))
        log.info("partitions_assigned", partitions=sorted(tp.partition for tp in assigned))

    async def wait_for(self, predicate: Any) -> None:
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: predicate(self.partitions))

    def describe(self) -> list[str]:
        return sorted(f"{tp.topic}-{tp.partition}" for tp in self.partitions)


def image_spans(tracer: Tracer, items: Sequence[BatchItem[ImageCaptured]]) -> tracing.ItemSpans:
    """One ``inference.image`` span per image, in the image's own trace (its record's
    ``traceparent``), linked to the batch's span (the shared work)."""
    return tracing.ItemSpans(
        tracer,
        "inference.image",
        [tracing.headers_context(item.record.headers or ()) for item in items],
        [
            {
                tracing.ATTR_SITE: item.event.site_id,
                tracing.ATTR_CAMERA: item.event.camera_id,
                tracing.ATTR_IMAGE: item.event.image_id,
                tracing.ATTR_BATCH_SIZE: len(items),
            }
            for item in items
        ],
        keys=[item.event.image_id for item in items],
    )


def trace_outcomes(spans: tracing.ItemSpans, result: BatchResult, start_ns: int) -> None:
    """Each image's decode and model run as child spans of its image span (the batch's phases,
    timed once for the batch), its decision or its failure as attributes."""
    decode_end = start_ns + int(result.decode_ms * 1e6)
    failed = {f.index: f.error.reason for f in result.failures}
    for i in range(len(spans)):
        spans.child(i, "inference.decode", start_ns=start_ns, end_ns=decode_end)
        if i in failed:
            tracing.mark_failed(spans[i], failed[i])
    for prediction in result.predictions:
        index = spans.index_of(prediction.image_id)
        if index is None:
            continue
        model_ms = result.model_ms.get((prediction.model_version, prediction.role.value), 0.0)
        spans.child(
            index,
            "inference.model",
            start_ns=decode_end,
            end_ns=decode_end + int(model_ms * 1e6),
            attributes={
                tracing.ATTR_MODEL_VERSION: prediction.model_version,
                tracing.ATTR_MODEL_ROLE: prediction.role.value,
            },
        )
        if prediction.role == ModelRole.CHAMPION:
            spans[index].set_attributes(
                {
                    tracing.ATTR_OUTCOME: "predicted",
                    tracing.ATTR_MODEL_VERSION: prediction.model_version,
                    tracing.ATTR_DEFECTIVE: prediction.defective,
                }
            )


async def publish_in_traces(
    broker: KafkaBroker,
    items: Sequence[BatchItem[ImageCaptured]],
    predictions: Sequence[PredictionMade],
    spans: tracing.ItemSpans,
) -> None:
    """Publish every prediction inside its image's span (its ``prediction.made`` joins the
    image's trace), then count them."""

    def span_of(event: Event) -> Span | None:
        index = spans.index_of(getattr(event, "image_id", ""))
        return spans[index] if index is not None else None

    await publish_events(broker, predictions, span_of=span_of)
    accepted_at = {item.event.image_id: item.event.occurred_at for item in items}
    now = utc_now()
    for prediction in predictions:
        PREDICTIONS.labels(
            prediction.site_id, prediction.model_version, prediction.role.value
        ).inc()
        if prediction.role == ModelRole.CHAMPION:
            # From ingest's acceptance, not the camera's clock (captured_at may be skewed).
            since = accepted_at.get(prediction.image_id, prediction.occurred_at)
            END_TO_END_LATENCY.labels(prediction.site_id).observe(
                max(0.0, (now - since).total_seconds())
            )


def register_handlers(
    broker: KafkaBroker,
    settings: InferenceSettings,
    *,
    router: ModelRouter,
    store: BlobStore,
    executors: Executors,
    stats: Stats,
    assignment: AssignmentTracker,
) -> None:
    tracer = tracing.tracer_for(settings, __name__)

    @batch_event_subscriber(
        broker,
        topics.IMAGE_CAPTURED,
        group_id=settings.group_id,
        service=settings.service_name,
        max_records=settings.max_batch,
        batch_timeout_ms=settings.max_wait_ms,
        listener=assignment,
    )
    async def predict_images(items: Sequence[BatchItem[ImageCaptured]]) -> list[Rejection]:
        # Boot: no image before the model table is read (else the first ones would be no_model).
        await router.ready.wait()
        table = router.snapshot()  # one table for the whole batch: switches happen between
        BATCH_SIZE.observe(len(items))
        spans = image_spans(tracer, items)
        try:
            start_ns = time.time_ns()
            result = await predict_events(
                [item.event for item in items],
                store,
                table.models_for,
                executors,
                max_pixels=settings.max_image_pixels,
                max_bytes=settings.max_blob_bytes,
            )
            trace_outcomes(spans, result, start_ns)
            await publish_in_traces(broker, items, result.predictions, spans)
        finally:
            spans.end()
        stats.record(len(items), len(result.predictions), len(result.failures))
        log.debug(
            "batch_predicted",
            size=len(items),
            predictions=len(result.predictions),
            failures=len(result.failures),
            decode_ms=round(result.decode_ms, 2),
        )
        return [Rejection.of(items[f.index].record, f.error) for f in result.failures]
