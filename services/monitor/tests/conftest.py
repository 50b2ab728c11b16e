"""Fixtures of the monitor tests: an in-file SQLite store and a builder of the consumed events."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from defectloop.common.db import make_engine
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    ImageCaptured,
    ImageRejected,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    RejectReason,
    ScoredBox,
    image_id_for,
    prediction_id_for,
)
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.performance import LabelledPrediction
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)
SHA = "0" * 64
DEFECT = Box(label="scratch", x=10, y=10, w=20, h=20)

LABELLED = LabelledPrediction(
    site_id="A",
    camera_id="cam-1",
    model_version="v1",
    role=ModelRole.CHAMPION,
    image_id="img-0",
    truth_defective=False,
    predicted_defective=False,
    decision_score=0.1,
    truth_boxes=(),
    predicted_boxes=(),
    sampling_reason="random",
    captured_at=datetime(2026, 6, 1, tzinfo=UTC),
    labelled_at=datetime(2026, 6, 1, 1, tzinfo=UTC),
    annotator="ann-1",
)
"""A good part the champion called good, labelled an hour after capture (random stratum): the
row the performance and scorecard tests vary with ``dataclasses.replace``."""


@pytest.fixture
def store(tmp_path: Path) -> MonitorStore:
    return MonitorStore(make_engine(f"sqlite:///{tmp_path / 'monitor.db'}"))


@pytest.fixture
def quality_evaluator(store: MonitorStore) -> Evaluator:
    """An evaluator of ``store`` with short camera-quality windows (reference 100 frames, window
    60, every 30), so that a few hundred simulated frames per camera exercise the quality check."""
    return Evaluator(
        store,
        MonitorSettings(
            database_url="sqlite://",
            quality_reference_frames=100,
            quality_window_frames=60,
            quality_every_frames=30,
        ),
    )


@dataclass
class EventFactory:
    """Events of one site as the other services publish them (deterministic ids included)."""

    site_id: str
    t0: datetime = T0
    _n: int = field(default=0)

    def image_id(self, i: int, camera_id: str = "cam-1") -> str:
        return image_id_for(self.site_id, camera_id, f"{i:064x}")

    def at(self, i: int) -> datetime:
        return self.t0 + timedelta(seconds=10 * i)

    def captured(
        self,
        i: int,
        camera_id: str = "cam-1",
        *,
        sharpness: float = 400.0,
        brightness: float = 120.0,
        contrast: float = 40.0,
    ) -> ImageCaptured:
        return ImageCaptured(
            site_id=self.site_id,
            camera_id=camera_id,
            image_id=self.image_id(i, camera_id),
            sha256=f"{i:064x}",
            blob_uri=f"file:///blobs/{i}.png",
            captured_at=self.at(i),
            width=256,
            height=256,
            quality=QualityMetrics(
                sharpness=sharpness, brightness=brightness, contrast=contrast, uniform=False
            ),
        )

    def rejected(self, i: int, camera_id: str = "cam-1") -> ImageRejected:
        return ImageRejected(
            site_id=self.site_id,
            camera_id=camera_id,
            reason=RejectReason.TOO_BLURRY,
            detail="sharpness below the floor",
            occurred_at=self.at(i),
        )

    def prediction(
        self,
        i: int,
        *,
        defective: bool,
        camera_id: str = "cam-1",
        version: str = "v1",
        role: ModelRole = ModelRole.CHAMPION,
        score: float | None = None,
    ) -> PredictionMade:
        image_id = self.image_id(i, camera_id)
        s = score if score is not None else (0.9 if defective else 0.05)
        boxes = (ScoredBox(label="scratch", x=10, y=10, w=20, h=20, score=s),) if defective else ()
        return PredictionMade(
            site_id=self.site_id,
            camera_id=camera_id,
            prediction_id=prediction_id_for(image_id, version, role.value),
            image_id=image_id,
            sha256=f"{i:064x}",
            blob_uri=f"file:///blobs/{i}.png",
            width=256,
            height=256,
            boxes=boxes,
            defective=defective,
            decision_score=s,
            decision_threshold=0.5,
            model_name="detector",
            model_version=version,
            role=role,
            outlier_score=0.1,
            outlier=False,
            captured_at=self.at(i),
            queue_latency_ms=1.0,
            inference_latency_ms=1.0,
        )

    def annotation(
        self,
        i: int,
        *,
        defective: bool,
        camera_id: str = "cam-1",
        annotator: str = "ann-1",
        reason: str | None = "random",
        status: AnnotationStatus = AnnotationStatus.COMPLETED,
        annotation_id: str | None = None,
        supersedes: str | None = None,
        delay_s: float = 60.0,
        boxes: Sequence[Box] | None = None,
    ) -> AnnotationCompleted:
        truth = tuple(boxes) if boxes is not None else ((DEFECT,) if defective else ())
        return AnnotationCompleted(
            site_id=self.site_id,
            camera_id=camera_id,
            image_id=self.image_id(i, camera_id),
            annotation_id=annotation_id or f"{self.site_id}-{i}-{annotator}",
            annotator=annotator,
            status=status,
            boxes=truth if status == AnnotationStatus.COMPLETED else (),
            skip_reason="unclear" if status == AnnotationStatus.SKIPPED else None,
            sampling_reason=reason,
            lead_time_s=delay_s,
            supersedes=supersedes,
            occurred_at=self.at(i) + timedelta(seconds=delay_s),
        )

    def deployed(
        self,
        version: str,
        *,
        at: datetime | None = None,
        role: ModelRole = ModelRole.CHAMPION,
        baseline: dict[str, float] | None = None,
        active: bool = True,
    ) -> ModelDeployed:
        return ModelDeployed(
            site_id=self.site_id,
            role=role,
            model_name="detector",
            model_version=version,
            artifact_uri=f"file:///bundles/{version}",
            sha256=SHA,
            baseline_metrics=baseline if baseline is not None else {},
            active=active,
            occurred_at=at or self.t0 - timedelta(hours=1),
        )


@pytest.fixture
def site() -> EventFactory:
    """Events of a fresh site (unique id: tests sharing a broker never read each other's)."""
    return EventFactory(f"s{uuid.uuid4().hex[:10]}")


@dataclass
class SimulatedCamera:
    """A camera whose truth and model decisions come from seeded draws (an exact, fast model).

    ``miss_rate``: share of defective images the model calls OK; ``false_alarm_rate``: share of
    good images it calls defective; ``blurred``: its frames lose sharpness (a data-quality fault)
    to ``blur_sharpness`` ± ``blur_sd`` (sharp frames: 400 ± 40; 340 ± 40 is a mild blur whose
    frames, one by one, look like sharp ones); ``brightness``: mean frame brightness (120; lower on
    every camera is a site-wide lighting change).
    """

    camera_id: str = "cam-1"
    prevalence: float = 0.3
    miss_rate: float = 0.08
    false_alarm_rate: float = 0.02
    blurred: bool = False
    blur_sharpness: float = 60.0
    blur_sd: float = 10.0
    brightness: float = 120.0


def simulate(
    site: EventFactory,
    rng: np.random.Generator,
    start: int,
    count: int,
    *,
    cameras: Sequence[SimulatedCamera] = (SimulatedCamera(),),
    version: str = "v1",
    shadow: tuple[str, SimulatedCamera] | None = None,
) -> list[list[object]]:
    """Events of ``count`` frames per camera from index ``start``: one group per frame (image
    captured, prediction(s), random-stratum annotation), in the order the services emit them."""
    groups: list[list[object]] = []
    for i in range(start, start + count):
        for cam in cameras:
            idx = i * 16 + cameras.index(cam)  # distinct image per camera and frame
            defective = bool(rng.random() < cam.prevalence)
            sharp = float(
                rng.normal(cam.blur_sharpness, cam.blur_sd)
                if cam.blurred
                else rng.normal(400.0, 40.0)
            )
            group: list[object] = [
                site.captured(
                    idx,
                    cam.camera_id,
                    sharpness=max(sharp, 1.0),
                    brightness=float(rng.normal(cam.brightness, 5.0)),
                    contrast=float(rng.normal(40.0, 3.0)),
                )
            ]
            models = [(version, ModelRole.CHAMPION, cam)]
            if shadow is not None:
                models.append((shadow[0], ModelRole.SHADOW, shadow[1]))
            for v, role, behaviour in models:
                p_def = 1 - behaviour.miss_rate if defective else behaviour.false_alarm_rate
                if cam.blurred and not defective:
                    p_def = 0.35  # blur makes the model divert good parts
                group.append(
                    site.prediction(
                        idx,
                        defective=bool(rng.random() < p_def),
                        camera_id=cam.camera_id,
                        version=v,
                        role=role,
                    )
                )
            group.append(site.annotation(idx, defective=defective, camera_id=cam.camera_id))
            groups.append(group)
    return groups
