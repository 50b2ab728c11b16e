"""Kafka adapters: incidents open jobs, captures and labels are recorded, deployments followed.

Each handler records what it needs (idempotent on the event's natural key) and wakes the
retraining loop (:mod:`defectloop.trainer.retrain`); none of them trains, snapshots or waits.
"""

from __future__ import annotations

import asyncio

from faststream.kafka import KafkaBroker

from defectloop.common import topics
from defectloop.common.events import (
    AnnotationCompleted,
    ImageCaptured,
    LabelsRequested,
    MetricDegraded,
    ModelDeployed,
)
from defectloop.common.kafka import DeadLetterPublisher, event_subscriber, publish_event
from defectloop.common.kafka_table import CompactedTableFollower
from defectloop.trainer.retrain import PublishLabelsRequest, Retrainer


def labels_request_publisher(broker: KafkaBroker) -> PublishLabelsRequest:
    async def publish(event: LabelsRequested) -> None:
        await publish_event(broker, event)

    return publish


def subscribe(broker: KafkaBroker, retrainer: Retrainer, *, group_id: str) -> None:
    settings = retrainer.settings
    service = settings.service_name
    store = retrainer.store

    @event_subscriber(broker, topics.METRIC_DEGRADED, group_id=group_id, service=service)
    async def on_metric_degraded(event: MetricDegraded) -> None:
        if settings.handles(event.site_id):
            await retrainer.on_incident(event)

    @event_subscriber(broker, topics.IMAGE_CAPTURED, group_id=group_id, service=service)
    async def on_image_captured(event: ImageCaptured) -> None:
        if settings.handles(event.site_id) and await asyncio.to_thread(store.record_image, event):
            retrainer.wake()

    @event_subscriber(broker, topics.ANNOTATION_COMPLETED, group_id=group_id, service=service)
    async def on_annotation_completed(event: AnnotationCompleted) -> None:
        if settings.handles(event.site_id) and await asyncio.to_thread(
            store.record_annotation, event
        ):
            retrainer.wake()


def deployments_follower(
    broker: KafkaBroker, retrainer: Retrainer
) -> CompactedTableFollower[ModelDeployed]:
    """The compacted ``model.deployed`` table into the trainer's database (champion per site)."""
    settings = retrainer.settings
    store = retrainer.store

    async def on_event(event: ModelDeployed) -> None:
        await asyncio.to_thread(store.record_deployment, event)

    async def on_tombstone(key: bytes | None) -> None:
        if key is not None:
            await asyncio.to_thread(store.forget_deployment, key.decode("utf-8", "replace"))

    return CompactedTableFollower(
        settings.kafka_bootstrap,
        topics.MODEL_DEPLOYED,
        on_event=on_event,
        on_tombstone=on_tombstone,
        dead_letters=DeadLetterPublisher(broker, settings.service_name),
        client_id=f"{settings.service_name}-deployments",
    )
