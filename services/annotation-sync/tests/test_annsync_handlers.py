"""annotation-sync's Kafka handlers, one message at a time, on FastStream's TestKafkaBroker.

What reaches the sync for each event (champion vs shadow, own vs other sites); that a Label Studio
outage never holds the partition, and the delivery itself, are real-broker tests elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from faststream.kafka import TestKafkaBroker

from defectloop.annotation_sync.handlers import subscribe
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common.events import (
    LabelsRequested,
    ModelRole,
    PredictionMade,
    ScoredBox,
    prediction_id_for,
)
from defectloop.common.kafka import build_broker, publish_event

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class RecordingSync:
    """Stands in for AnnotationSync at the handler boundary: records what the handlers pass on."""

    def __init__(self, settings: AnnotationSyncSettings) -> None:
        self.settings = settings
        self.predictions: list[PredictionMade] = []
        self.requests: list[LabelsRequested] = []

    async def on_prediction(self, event: PredictionMade) -> None:
        self.predictions.append(event)

    async def on_labels_requested(self, event: LabelsRequested) -> None:
        self.requests.append(event)


def _prediction(site: str, role: ModelRole = ModelRole.CHAMPION, i: int = 0) -> PredictionMade:
    image_id = f"img-{site}-{i}"
    return PredictionMade(
        site_id=site,
        camera_id="cam-1",
        prediction_id=prediction_id_for(image_id, "v1", role.value),
        image_id=image_id,
        sha256=f"{i:064x}",
        blob_uri=f"file:///blobs/{i}.png",
        width=64,
        height=64,
        boxes=(ScoredBox(label="scratch", x=1, y=1, w=5, h=5, score=0.9),),
        defective=True,
        decision_score=0.9,
        decision_threshold=0.5,
        model_name="tiny",
        model_version="v1",
        role=role,
        outlier_score=0.1,
        outlier=False,
        captured_at=NOW,
        queue_latency_ms=1.0,
        inference_latency_ms=1.0,
    )


def _request(site: str) -> LabelsRequested:
    return LabelsRequested(
        site_id=site,
        request_id=f"req-{site}",
        reason="incident",
        incident_id="inc-1",
        random_share=1.0,
        target_labels=2,
        expires_at=NOW + timedelta(days=1),
    )


async def _deliver(sync: RecordingSync, *events: Any) -> None:
    broker = build_broker("127.0.0.1:9092", client_id="annsync-unit")
    subscribe(broker, cast(AnnotationSync, sync), group_id="annsync-unit")
    async with TestKafkaBroker(broker) as test_broker:
        for event in events:
            await publish_event(test_broker, event)


async def test_champion_predictions_are_recorded_and_shadow_ones_are_not() -> None:
    sync = RecordingSync(AnnotationSyncSettings(database_url="sqlite://"))
    champion, shadow = _prediction("A"), _prediction("A", ModelRole.SHADOW, 1)
    await _deliver(sync, champion, shadow)
    assert sync.predictions == [champion]


async def test_a_site_deployment_ignores_other_sites_predictions_and_requests() -> None:
    settings = AnnotationSyncSettings(
        database_url="sqlite://", sites=["A"], ignore_other_sites=True
    )
    sync = RecordingSync(settings)
    await _deliver(sync, _prediction("B"), _request("B"), _prediction("A"), _request("A"))
    assert ([p.site_id for p in sync.predictions], [r.site_id for r in sync.requests]) == (
        ["A"],
        ["A"],
    )


async def test_without_a_site_list_every_sites_events_are_handled() -> None:
    sync = RecordingSync(AnnotationSyncSettings(database_url="sqlite://"))
    await _deliver(sync, _prediction("B"), _request("C"))
    assert ([p.site_id for p in sync.predictions], [r.site_id for r in sync.requests]) == (
        ["B"],
        ["C"],
    )
