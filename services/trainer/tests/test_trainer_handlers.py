"""The trainer's Kafka handlers, one message at a time, on FastStream's TestKafkaBroker.

Real job store (SQLite); the retrainer is a recorder at the handler boundary: what each event
wakes or opens. Delivery and restarts are the real-broker service tests' business.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from faststream.kafka import TestKafkaBroker

from defectloop.common.db import make_engine
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    DegradationKind,
    ImageCaptured,
    MetricDegraded,
    QualityMetrics,
    image_id_for,
)
from defectloop.common.kafka import build_broker, publish_event
from defectloop.trainer.handlers import subscribe
from defectloop.trainer.jobs import JobStore
from defectloop.trainer.retrain import Retrainer
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class RecordingRetrainer:
    """What the handlers call on the retrainer, over a real job store."""

    def __init__(self, store: JobStore) -> None:
        self.settings = TrainerSettings(database_url="sqlite://")
        self.store = store
        self.incidents: list[MetricDegraded] = []
        self.wakes = 0

    async def on_incident(self, event: MetricDegraded) -> None:
        self.incidents.append(event)

    def wake(self) -> None:
        self.wakes += 1


@pytest.fixture
def retrainer(tmp_path: Path) -> RecordingRetrainer:
    engine = make_engine(f"sqlite:///{tmp_path / 'trainer.db'}", create_tables=False)
    return RecordingRetrainer(JobStore(engine))


def _image(site: str, i: int) -> ImageCaptured:
    digest = f"{i:064x}"
    return ImageCaptured(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id_for(site, "cam-1", digest),
        sha256=digest,
        blob_uri=f"file:///blobs/{digest}.png",
        captured_at=NOW,
        width=64,
        height=64,
        quality=QualityMetrics(sharpness=1.0, brightness=1.0, contrast=1.0, uniform=False),
    )


def _label(image: ImageCaptured) -> AnnotationCompleted:
    return AnnotationCompleted(
        site_id=image.site_id,
        camera_id=image.camera_id,
        image_id=image.image_id,
        annotation_id=f"ann-{image.image_id}",
        annotator="ann-1",
        status=AnnotationStatus.COMPLETED,
        lead_time_s=3.0,
    )


def _incident(site: str) -> MetricDegraded:
    return MetricDegraded(
        site_id=site,
        incident_id="inc-1",
        kind=DegradationKind.PERFORMANCE,
        metric="recall",
        value=0.4,
        baseline=0.92,
        threshold=0.87,
        window_start=NOW - timedelta(hours=1),
        window_end=NOW,
        sample_size=80,
        change_point_at=NOW - timedelta(hours=1),
    )


async def _deliver(retrainer: RecordingRetrainer, *events: Any) -> None:
    broker = build_broker("127.0.0.1:9092", client_id="trainer-unit")
    subscribe(broker, cast(Retrainer, retrainer), group_id="trainer-unit")
    async with TestKafkaBroker(broker) as test_broker:
        for event in events:
            await publish_event(test_broker, event)


async def test_an_incident_goes_to_the_retrainer(retrainer: RecordingRetrainer) -> None:
    incident = _incident("A")
    await _deliver(retrainer, incident)
    assert (retrainer.incidents, retrainer.wakes) == ([incident], 0)


async def test_new_images_and_labels_wake_the_loop_and_redeliveries_do_not(
    retrainer: RecordingRetrainer,
) -> None:
    image = _image("A", 1)
    label = _label(image)
    await _deliver(retrainer, image, label, image, label)
    assert retrainer.wakes == 2
