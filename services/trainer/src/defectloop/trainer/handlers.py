"""Kafka adapters: incidents open jobs, captures and labels are recorded, deployments followed,
bundles refused by inference go into the audit chain.

Each handler records what it needs (idempotent on the event's natural key) and wakes the
retraining loop (:mod:`defectloop.trainer.retrain`); none of them trains, snapshots or waits.
"""

from __future__ import annotations

import asyncio

from faststream.kafka import KafkaBroker
from sqlmodel import col, select

from defectloop.common import topics
from defectloop.common.events import (
    AnnotationCompleted,
    ImageCaptured,
    LabelsRequested,
    MetricDegraded,
    ModelDeployed,
    ModelRefused,
)
from defectloop.common.kafka import DeadLetterPublisher, event_subscriber, publish_event
from defectloop.common.kafka_table import CompactedTableFollower
from defectloop.trainer.audit import AuditAction, AuditRecord, append_record, canonical_json
from defectloop.trainer.registry import Registry
from defectloop.trainer.retrain import PublishLabelsRequest, Retrainer


def labels_request_publisher(broker: KafkaBroker) -> PublishLabelsRequest:
    async def publish(event: LabelsRequested) -> None:
        await publish_event(broker, event)

    return publish


def record_refusal(registry: Registry, event: ModelRefused) -> bool:
    """Append a ``bundle_refused`` record for ``event`` unless its event id is in the chain
    already (a redelivery); True when appended."""
    # The evidence is canonical JSON (sorted keys, no spaces): the event id is found verbatim.
    marker = canonical_json({"event_id": event.event_id})[1:-1]
    with registry.session() as s:
        seen = s.exec(
            select(AuditRecord.seq).where(
                AuditRecord.action == AuditAction.BUNDLE_REFUSED.value,
                col(AuditRecord.evidence_json).contains(marker),
            )
        ).first()
        if seen is not None:
            return False
        append_record(
            s,
            action=AuditAction.BUNDLE_REFUSED,
            actor=event.instance,
            model_version=event.model_version,
            site=event.site_id,
            reason=event.reason,
            evidence={
                "event_id": event.event_id,
                "role": event.role.value,
                "artifact_uri": event.artifact_uri,
                "deployed_sha256": event.sha256,
                "error": event.error,
                "still_serving": event.still_serving,
            },
            at=event.occurred_at,
        )
        s.commit()
    return True


def subscribe(
    broker: KafkaBroker,
    retrainer: Retrainer,
    *,
    group_id: str,
    audit: Registry | None = None,
) -> None:
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

    if audit is not None:

        @event_subscriber(broker, topics.MODEL_REFUSED, group_id=group_id, service=service)
        async def on_model_refused(event: ModelRefused) -> None:
            if settings.handles(event.site_id):
                await asyncio.to_thread(record_refusal, audit, event)

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
