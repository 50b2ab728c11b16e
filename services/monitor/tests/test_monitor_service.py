"""The monitor service on the real broker, fed a simulated site (issue 9, "Done when").

Ground truth comes from the factory simulator (``defectloop.factory_sim``: rendered frames with
their defect boxes, at 128 px to keep the test fast) and the quality metrics from ingest's own
measurement of those frames; the model's decisions are drawn from the truth with a controlled miss
rate and false-alarm rate (exact and fast, instead of training a detector). Every event goes
through Kafka into the service; its decisions are read back from Kafka (``metric.degraded``,
``metric.recovered``, ``labels.requested``) and from its HTTP API.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from defectloop.common import topics
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    DegradationKind,
    Event,
    ImageCaptured,
    LabelsRequested,
    MetricDegraded,
    MetricRecovered,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    ScoredBox,
    image_id_for,
    prediction_id_for,
    sha256_hex,
)
from defectloop.common.kafka import build_broker, publish_event
from defectloop.factory_sim.drift import Drift
from defectloop.factory_sim.render import render
from defectloop.factory_sim.sites import get_site
from defectloop.ingest.quality import measure
from defectloop.monitor.main import build_app
from defectloop.monitor.settings import MonitorSettings
from defectloop.testing.http import serve
from defectloop.testing.kafka import TopicCollector, collect, started_broker
from defectloop.testing.net import free_port, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTPUTS = (topics.METRIC_DEGRADED, topics.METRIC_RECOVERED, topics.LABELS_REQUESTED)
PROFILE = get_site("A").with_size(128)
SHA = "0" * 64


@dataclass(frozen=True)
class Behaviour:
    """How the simulated model decides: misses and false alarms (good parts diverted)."""

    miss_rate: float = 0.08
    false_alarm_rate: float = 0.03


class SimSite:
    """A site's frames from the factory simulator, turned into the events the services emit."""

    def __init__(self, site_id: str, start: datetime, seed: int = 3) -> None:
        self.site_id = site_id
        self.start = start
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def at(self, index: int) -> datetime:
        return self.start + timedelta(seconds=index)

    def deployed(self, version: str, at: datetime, role: ModelRole, **baseline: float) -> Event:
        return ModelDeployed(
            site_id=self.site_id,
            role=role,
            model_name="detector",
            model_version=version,
            artifact_uri=f"file:///bundles/{version}",
            sha256=SHA,
            baseline_metrics=baseline,
            occurred_at=at,
        )

    def frames(
        self,
        camera: str,
        first: int,
        count: int,
        models: Sequence[tuple[str, ModelRole, Behaviour]],
        drifts: Sequence[Drift] = (),
    ) -> list[Event]:
        """Captured image, each model's prediction and a random-stratum label per frame."""
        out: list[Event] = []
        cam_seed = self.seed * 100 + int(camera.rsplit("-", 1)[-1])
        for index in range(first, first + count):
            img = render(PROFILE, index, cam_seed, drifts)
            sha = sha256_hex(img.pixels.tobytes() + camera.encode())
            image_id = image_id_for(self.site_id, camera, sha)
            truth = tuple(Box(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h) for b in img.boxes)
            at = self.at(index)
            out.append(
                ImageCaptured(
                    site_id=self.site_id,
                    camera_id=camera,
                    image_id=image_id,
                    sha256=sha,
                    blob_uri=f"file:///blobs/{sha}.png",
                    captured_at=at,
                    width=PROFILE.width,
                    height=PROFILE.height,
                    quality=measure(img.pixels),
                )
            )
            for version, role, behaviour in models:
                rate = 1 - behaviour.miss_rate if truth else behaviour.false_alarm_rate
                defective = bool(self.rng.random() < rate)
                score = float(
                    self.rng.uniform(0.6, 0.95) if defective else self.rng.uniform(0, 0.3)
                )
                boxes = (
                    tuple(ScoredBox(**b.model_dump(), score=score) for b in (truth or (_SPURIOUS,)))
                    if defective
                    else ()
                )
                out.append(
                    PredictionMade(
                        site_id=self.site_id,
                        camera_id=camera,
                        prediction_id=prediction_id_for(image_id, version, role.value),
                        image_id=image_id,
                        sha256=sha,
                        blob_uri=f"file:///blobs/{sha}.png",
                        width=PROFILE.width,
                        height=PROFILE.height,
                        boxes=boxes,
                        defective=defective,
                        decision_score=score,
                        decision_threshold=0.5,
                        model_name="detector",
                        model_version=version,
                        role=role,
                        outlier_score=0.1,
                        outlier=False,
                        captured_at=at,
                        queue_latency_ms=1.0,
                        inference_latency_ms=1.0,
                    )
                )
            out.append(
                AnnotationCompleted(
                    site_id=self.site_id,
                    camera_id=camera,
                    image_id=image_id,
                    annotation_id=f"{image_id}-1",
                    annotator="ann-1",
                    status=AnnotationStatus.COMPLETED,
                    boxes=truth,
                    sampling_reason="random",
                    lead_time_s=30.0,
                    occurred_at=at + timedelta(seconds=30),
                )
            )
        return out


_SPURIOUS = Box(label="spot", x=10, y=10, w=12, h=12)


@dataclass
class RunningMonitor:
    url: str
    outputs: TopicCollector[Any]

    async def get(self, path: str) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            resp = await client.get(path)
            resp.raise_for_status()
            return resp.json()

    async def poll(self, path: str) -> Any:
        """Like :meth:`get`, but None while the site is still unknown (404: nothing recorded)."""
        async with httpx.AsyncClient(base_url=self.url, timeout=30) as client:
            resp = await client.get(path)
            if resp.status_code == 404:
                return None
            resp.raise_for_status()
            return resp.json()

    def events(self, event_type: type[Event], /, **fields: object) -> list[Any]:
        """Collected events of ``event_type`` whose fields have the given values."""
        found = self.outputs.of(event_type)
        return [e for e in found if all(getattr(e, k) == v for k, v in fields.items())]


@asynccontextmanager
async def run_monitor(
    tmp: Path, bootstrap: str, site_id: str, **overrides: object
) -> AsyncIterator[RunningMonitor]:
    """The monitor served by uvicorn in this event loop, evaluating ``site_id`` only."""
    values: dict[str, object] = {
        "port": free_port(),
        "kafka_bootstrap": bootstrap,
        "database_url": f"sqlite:///{tmp / 'monitor.db'}",
        "sites": [site_id],
        "evaluation_interval_s": 0.3,
        "log_format": "console",
    }
    values.update(overrides)
    settings = MonitorSettings(**values)  # type: ignore[arg-type]
    broker = build_broker(bootstrap, client_id="monitor-test")
    app = build_app(settings, broker=broker, group_id=f"monitor-test-{uuid.uuid4().hex[:8]}")
    async with (
        collect(bootstrap, OUTPUTS, where=lambda e: e.site_id == site_id) as outputs,
        serve(app, port=settings.port) as url,
    ):
        yield RunningMonitor(url, outputs)


async def publish_all(bootstrap: str, events: Sequence[Event]) -> None:
    async with started_broker(bootstrap) as broker:
        for start in range(0, len(events), 200):
            await asyncio.gather(*(publish_event(broker, e) for e in events[start : start + 200]))


async def settled(
    monitor: RunningMonitor,
    site_id: str,
    labels: int,
    *,
    version: str = "v1",
    of_version: int | None = None,
) -> None:
    """Wait until the monitor recorded ``labels`` labels and ran every performance evaluation of
    ``version`` they make due (it evaluates again after ``performance_every_labels`` new ones;
    ``of_version``: how many of the labels are of that version's predictions)."""
    expected = labels if of_version is None else of_version

    async def done() -> bool:
        summary = await monitor.poll(f"/v1/sites/{site_id}")
        if summary is None or summary["annotations"]["completed"] < labels:
            return False
        state = await monitor.get(f"/v1/sites/{site_id}/evaluation")
        every = state["cadence"]["performance_labels"]
        seen = state["observations_evaluated"].get(f"performance/{site_id}/{version}", 0)
        # ...and published what those evaluations decided (the outbox drains after each run).
        return bool(seen > expected - every) and state["outbox_pending"] == 0

    await wait_until(done, timeout_s=240, interval_s=0.5, what=f"{labels} labels evaluated")


@pytest.fixture
def site_id() -> str:
    return f"mon{uuid.uuid4().hex[:10]}"


async def test_recall_drop_gives_one_performance_incident_and_one_recovery(
    kafka_bootstrap: str, tmp_path: Path, site_id: str
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    sim = SimSite(site_id, start)
    v1 = [("v1", ModelRole.CHAMPION, Behaviour())]
    v1_missing = [("v1", ModelRole.CHAMPION, Behaviour(miss_rate=0.5))]
    v2 = [("v2", ModelRole.CHAMPION, Behaviour())]
    new_defect = [Drift("new-defect", start_index=300, severity=0.8)]

    async with run_monitor(tmp_path, kafka_bootstrap, site_id) as monitor:
        deploy_v1 = sim.deployed(
            "v1", start - timedelta(seconds=1), ModelRole.CHAMPION, recall=0.92, precision=0.97
        )
        await publish_all(kafka_bootstrap, [deploy_v1, *sim.frames("cam-1", 0, 300, v1)])
        await settled(monitor, site_id, 300)
        calm = list(monitor.outputs.items)

        await publish_all(kafka_bootstrap, sim.frames("cam-1", 300, 200, v1_missing, new_defect))
        await settled(monitor, site_id, 500)
        await monitor.outputs.wait_for(
            lambda items: any(
                isinstance(e, MetricDegraded) and e.kind == DegradationKind.PERFORMANCE
                for e in items
            ),
            timeout_s=60,
        )
        degraded = monitor.events(MetricDegraded, kind=DegradationKind.PERFORMANCE)

        deploy_v2 = sim.deployed(
            "v2",
            sim.at(499) + timedelta(milliseconds=500),
            ModelRole.CHAMPION,
            recall=0.92,
            precision=0.97,
        )
        await publish_all(
            kafka_bootstrap, [deploy_v2, *sim.frames("cam-1", 500, 150, v2, new_defect)]
        )
        await monitor.outputs.wait_for(
            lambda items: any(isinstance(e, MetricRecovered) for e in items), timeout_s=120
        )
        await settled(monitor, site_id, 650, version="v2", of_version=150)
        recovered = monitor.events(MetricRecovered, kind=DegradationKind.PERFORMANCE)
        after = monitor.events(MetricDegraded, kind=DegradationKind.PERFORMANCE)
        incidents = await monitor.get(f"/v1/sites/{site_id}/incidents")

    assert calm == []  # 300 labels without drift: no event of any kind
    assert [(e.metric, e.model_version) for e in degraded] == [("recall", "v1")]
    incident = degraded[0]
    assert (incident.ci_high or 1.0) < incident.threshold
    assert (incident.n_positive or 0) >= 20
    asks = monitor.events(LabelsRequested, incident_id=incident.incident_id)
    assert [a.reason for a in asks] == ["incident"]
    assert [(r.incident_id, r.reason) for r in recovered] == [
        (incident.incident_id, "model_retired")
    ]
    assert after == degraded  # v2 opened nothing
    stored = {i["incident_id"]: i for i in incidents["incidents"]}
    assert stored[incident.incident_id]["close_reason"] == "model_retired"


async def test_blurred_camera_gives_one_data_quality_incident_and_no_performance_one(
    kafka_bootstrap: str, tmp_path: Path, site_id: str
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    sim = SimSite(site_id, start, seed=5)
    model = [("v1", ModelRole.CHAMPION, Behaviour())]
    diverting = [("v1", ModelRole.CHAMPION, Behaviour(false_alarm_rate=0.4))]
    blur = [Drift("blur", start_index=200, severity=0.25)]  # annotators can still label it
    cameras = ("cam-1", "cam-2", "cam-3")

    async with run_monitor(
        tmp_path,
        kafka_bootstrap,
        site_id,
        quality_reference_frames=100,
        quality_window_frames=60,
        quality_every_frames=30,
    ) as monitor:
        deploy = sim.deployed(
            "v1", start - timedelta(seconds=1), ModelRole.CHAMPION, recall=0.92, precision=0.97
        )
        calm = [e for c in cameras for e in sim.frames(c, 0, 200, model)]
        await publish_all(kafka_bootstrap, [deploy, *calm])
        await settled(monitor, site_id, 600)
        before = list(monitor.outputs.items)

        fault = [
            *sim.frames("cam-1", 200, 100, model),
            *sim.frames("cam-2", 200, 100, model),
            *sim.frames("cam-3", 200, 100, diverting, blur),
        ]
        await publish_all(kafka_bootstrap, fault)
        await monitor.outputs.wait_for(
            lambda items: any(
                isinstance(e, MetricDegraded) and e.kind == DegradationKind.DATA_QUALITY
                for e in items
            ),
            timeout_s=180,
        )
        await settled(monitor, site_id, 900)
        drift = await monitor.get(f"/v1/sites/{site_id}/drift")

    assert before == []
    quality = monitor.events(MetricDegraded, kind=DegradationKind.DATA_QUALITY)
    assert [(e.camera_id, e.model_version) for e in quality] == [("cam-3", None)]
    assert monitor.events(MetricDegraded, kind=DegradationKind.PERFORMANCE) == []
    assert monitor.events(LabelsRequested, incident_id=quality[0].incident_id) == []
    assert drift["cameras"]["cam-3"]["breached"] is True


async def test_blurred_cameras_labels_published_before_its_frames_open_no_performance_incident(
    kafka_bootstrap: str, tmp_path: Path, site_id: str
) -> None:
    """The CI race on the real broker, made certain: every prediction and label of the blurred
    period is published (and recorded) before any of its frames, so performance sees the labels
    of blurred frames before the quality detector has seen one blurred frame."""
    start = datetime.now(UTC) - timedelta(hours=2)
    sim = SimSite(site_id, start, seed=5)
    model = [("v1", ModelRole.CHAMPION, Behaviour())]
    diverting = [("v1", ModelRole.CHAMPION, Behaviour(false_alarm_rate=0.4))]
    blur = [Drift("blur", start_index=200, severity=0.25)]
    cameras = ("cam-1", "cam-2", "cam-3")

    async with run_monitor(
        tmp_path,
        kafka_bootstrap,
        site_id,
        quality_reference_frames=100,
        quality_window_frames=60,
        quality_every_frames=30,
    ) as monitor:
        deploy = sim.deployed(
            "v1", start - timedelta(seconds=1), ModelRole.CHAMPION, recall=0.92, precision=0.97
        )
        calm = [e for c in cameras for e in sim.frames(c, 0, 200, model)]
        await publish_all(kafka_bootstrap, [deploy, *calm])
        await settled(monitor, site_id, 600)

        fault = [
            *sim.frames("cam-1", 200, 100, model),
            *sim.frames("cam-2", 200, 100, model),
            *sim.frames("cam-3", 200, 100, diverting, blur),
        ]
        await publish_all(kafka_bootstrap, [e for e in fault if not isinstance(e, ImageCaptured)])
        await settled(monitor, site_id, 900)  # every label evaluated, no frame of them yet
        await publish_all(kafka_bootstrap, [e for e in fault if isinstance(e, ImageCaptured)])
        await monitor.outputs.wait_for(
            lambda items: any(
                isinstance(e, MetricDegraded) and e.kind == DegradationKind.DATA_QUALITY
                for e in items
            ),
            timeout_s=180,
        )

        # 640: the 600 calm labels (less cam-3's last calm frames, whose windows reach into the
        # blur) and the older half of cam-1's and cam-2's fault labels; their newest 50 each stay
        # held (no frames of their camera after them), cam-3's blurred ones are left out. Every
        # camera's frames may arrive after its peers' (one partition read later): see
        # test_monitor_lagging_camera.py.
        async def counted() -> bool:
            state = await monitor.get(f"/v1/sites/{site_id}/evaluation")
            seen = state["observations_evaluated"].get(f"performance-counted/{site_id}/v1", 0)
            return bool(seen >= 640) and state["outbox_pending"] == 0

        await wait_until(counted, timeout_s=120, interval_s=0.5, what="held labels counted")

    quality = monitor.events(MetricDegraded, kind=DegradationKind.DATA_QUALITY)
    assert [(e.camera_id, e.model_version) for e in quality] == [("cam-3", None)]
    assert monitor.events(MetricDegraded, kind=DegradationKind.PERFORMANCE) == []


async def test_shadow_gets_a_paired_scorecard_from_the_same_labels(
    kafka_bootstrap: str, tmp_path: Path, site_id: str
) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    sim = SimSite(site_id, start, seed=7)
    both = [
        ("v1", ModelRole.CHAMPION, Behaviour(miss_rate=0.3, false_alarm_rate=0.0)),
        ("v2", ModelRole.SHADOW, Behaviour(miss_rate=0.03, false_alarm_rate=0.0)),
    ]

    async with run_monitor(tmp_path, kafka_bootstrap, site_id) as monitor:
        deployments = [
            sim.deployed("v1", start - timedelta(seconds=2), ModelRole.CHAMPION),
            sim.deployed("v2", start - timedelta(seconds=1), ModelRole.SHADOW),
        ]
        await publish_all(kafka_bootstrap, [*deployments, *sim.frames("cam-1", 0, 150, both)])

        async def card() -> dict[str, Any] | None:
            found = await monitor.poll(f"/v1/sites/{site_id}/scorecards")
            if found is None:
                return None
            cards = found["scorecards"]
            return cards[0] if cards and cards[0]["n_pairs"] == 150 else None

        scored = await wait_until(card, timeout_s=120, interval_s=0.5, what="150 paired labels")

    assert scored["role"] == "shadow"
    assert (scored["champion_version"], scored["candidate_version"]) == ("v1", "v2")
    counts = scored["recall_counts"]
    assert counts["second_only"] > counts["first_only"]  # images only the shadow caught
    assert scored["recall"]["ci_low"] > 0
    assert scored["mcnemar_p"] < 0.05
    assert scored["verdict"] == "better"
