"""Kafka adapters: ``prediction.made`` -> sampling (recorded, pushed later), ``labels.requested``
-> the site's raised random share; our events -> Kafka."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from defectloop.annotation_sync.pull import Publish
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common import topics
from defectloop.common.events import (
    AnnotationCompleted,
    LabelsRequested,
    ModelRole,
    PredictionMade,
)
from defectloop.common.kafka import event_subscriber, publish_event
from defectloop.common.metrics import ANNOTATIONS

GROUP_ID = "annotation-sync"


def publisher(broker: KafkaBroker) -> Publish:
    async def publish(event: AnnotationCompleted) -> None:
        await publish_event(broker, event)
        ANNOTATIONS.labels(event.site_id, event.status.value).inc()

    return publish


def subscribe(broker: KafkaBroker, sync: AnnotationSync, *, group_id: str = GROUP_ID) -> None:
    service = sync.settings.service_name

    def ours(site_id: str) -> bool:
        return not sync.settings.ignore_other_sites or site_id in sync.settings.sites

    @event_subscriber(broker, topics.PREDICTION_MADE, group_id=group_id, service=service)
    async def on_prediction_made(event: PredictionMade) -> None:
        # Records the sample and returns: Label Studio is never called here, so an outage
        # cannot hold this partition (the pusher pushes the task with its own retries).
        if event.role == ModelRole.CHAMPION and ours(event.site_id):
            await sync.on_prediction(event)

    @event_subscriber(broker, topics.LABELS_REQUESTED, group_id=group_id, service=service)
    async def on_labels_requested(event: LabelsRequested) -> None:
        if ours(event.site_id):
            await sync.on_labels_requested(event)
