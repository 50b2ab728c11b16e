"""Kafka adapters: a batch of ``image.captured`` in, ``prediction.made`` (and DLQ entries) out.

The work is in :mod:`defectloop.inference.pipeline`; here the batch waits for the model table to
be ready, takes one snapshot of it, publishes the predictions concurrently (in order, then awaits
every acknowledgement) and returns the per-item failures, which
:func:`defectloop.common.kafka_batch.batch_event_subscriber` dead-letters before committing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from faststream.kafka import KafkaBroker

from defectloop.common import topics
from defectloop.common.blobstore import BlobStore
from defectloop.common.events import ImageCaptured
from defectloop.common.kafka import publish_events
from defectloop.common.kafka_batch import BatchItem, Rejection, batch_event_subscriber
from defectloop.common.logging import get_logger
from defectloop.inference.pipeline import Executors, predict_events
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
        result = await predict_events(
            [item.event for item in items],
            store,
            table.models_for,
            executors,
            max_pixels=settings.max_image_pixels,
            max_bytes=settings.max_blob_bytes,
        )
        await publish_events(broker, result.predictions)
        stats.record(len(items), len(result.predictions), len(result.failures))
        log.debug(
            "batch_predicted",
            size=len(items),
            predictions=len(result.predictions),
            failures=len(result.failures),
            decode_ms=round(result.decode_ms, 2),
        )
        return [Rejection.of(items[f.index].record, f.error) for f in result.failures]
