"""Kafka adapters: ``prediction.made`` -> sampling and task push; our events -> Kafka."""

from __future__ import annotations

from faststream.kafka import KafkaBroker

from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common import topics
from defectloop.common.events import AnnotationCompleted, ModelRole, PredictionMade
from defectloop.common.kafka import event_subscriber, publish_event

GROUP_ID = "annotation-sync"


def publisher(broker: KafkaBroker):  # type: ignore[no-untyped-def]
    async def publish(event: AnnotationCompleted) -> None:
        await publish_event(broker, event)

    return publish


def subscribe(broker: KafkaBroker, sync: AnnotationSync, *, group_id: str = GROUP_ID) -> None:
    @event_subscriber(
        broker, topics.PREDICTION_MADE, group_id=group_id, service=sync.settings.service_name
    )
    async def on_prediction_made(event: PredictionMade) -> None:
        if event.role != ModelRole.CHAMPION:
            return
        if sync.settings.ignore_other_sites and event.site_id not in sync.settings.sites:
            return
        await sync.on_prediction(event)
