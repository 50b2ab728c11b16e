"""Fixtures of the annotation-sync tests: a real Label Studio, the service on a real port."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from defectloop.annotation_sync.main import build_app
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common.events import ModelRole, PredictionMade, ScoredBox, prediction_id_for
from defectloop.common.kafka import build_broker
from defectloop.common.kafka_admin import partitions_of
from defectloop.factory_sim.cameras import Truth
from defectloop.testing.http import serve
from defectloop.testing.net import free_port


@dataclass(frozen=True)
class LabelStudioServer:
    url: str
    token: str
    layout: Any = None  # labelstudio_local.LabelStudioLayout when started here (can be stopped)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio (own data dir, free port) for the session, started by
    ``labelstudio_local``. A missing install FAILS the tests that need it (never a skip: a
    broken install must not silently drop them from CI)."""
    from defectloop.cli import labelstudio_local

    external = os.environ.get("DEFECTLOOP_TEST_LABEL_STUDIO_URL")
    if external:  # an already running instance (like KAFKA_BOOTSTRAP for the broker)
        yield LabelStudioServer(external, os.environ["DEFECTLOOP_TEST_LABEL_STUDIO_TOKEN"])
        return
    if not labelstudio_local.installed():
        pytest.fail(
            f"Label Studio is not installed at {labelstudio_local.venv_dir()}: "
            "run scripts/install-labelstudio.sh (make setup does it)"
        )
    layout = labelstudio_local.LabelStudioLayout(tmp_path_factory.mktemp("ls"), port=free_port())
    labelstudio_local.start(layout, timeout_s=400)
    try:
        yield LabelStudioServer(layout.url, labelstudio_local.credentials(layout)["token"], layout)
    finally:
        labelstudio_local.stop(layout)


@dataclass
class RunningService:
    settings: AnnotationSyncSettings
    sync: AnnotationSync
    url: str


@asynccontextmanager
async def run_service(
    settings: AnnotationSyncSettings, bootstrap: str, group_id: str
) -> AsyncIterator[RunningService]:
    """annotation-sync served by uvicorn on ``settings.port``, in this event loop."""
    broker = build_broker(bootstrap, client_id="annotation-sync-test")
    app = build_app(settings, broker=broker, group_id=group_id)
    async with serve(app, port=settings.port) as url:
        yield RunningService(settings, app.state.sync, url)


def service_settings(
    tmp: Path, ls: LabelStudioServer, site: str, **overrides: object
) -> AnnotationSyncSettings:
    port = free_port()
    values: dict[str, object] = {
        "port": port,
        "database_url": f"sqlite:///{tmp / 'annotation-sync.db'}",
        "blob_url": (tmp / "blobs").as_uri(),
        "label_studio_url": ls.url,
        "label_studio_token": ls.token,
        "label_studio_backoff_s": 0.2,
        "sites": [site],
        "signing_secret": "test-signing-secret",
        "poll_interval_s": 3600.0,  # the startup poll only; tests reconcile explicitly
        "random_share": 1.0,
        "overlap_share": 1.0,
        "daily_budget": 1000,
        "log_format": "console",
    }
    values.update(overrides)
    return AnnotationSyncSettings(**values)  # type: ignore[arg-type]


async def end_offsets(bootstrap: str, topic: str) -> dict[TopicPartition, int]:
    """The current end offset of each partition of ``topic``."""
    partitions = (await partitions_of(bootstrap, [topic])).get(topic, [])
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        return dict(await consumer.end_offsets(tps))
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    """The offsets ``group`` has committed (what it will never read again)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in found.items()}
    finally:
        await admin.close()


async def committed_past(bootstrap: str, group: str, ends: dict[TopicPartition, int]) -> bool:
    """True once ``group`` committed at least ``ends`` on every partition."""
    done = await committed(bootstrap, group)
    return all(done.get(tp, -1) >= end for tp, end in ends.items())


def prediction(
    site: str,
    image_id: str,
    *,
    boxes: tuple[ScoredBox, ...] = (),
    size: tuple[int, int] = (64, 64),
    blob_uri: str = "file:///nowhere.png",
    sha256: str = "0" * 64,
    captured_at: datetime | None = None,
) -> PredictionMade:
    """A champion's prediction (defective iff it has boxes, far from the threshold)."""
    return PredictionMade(
        site_id=site,
        camera_id="cam-1",
        prediction_id=prediction_id_for(image_id, "v1", "champion"),
        image_id=image_id,
        sha256=sha256,
        blob_uri=blob_uri,
        width=size[0],
        height=size[1],
        boxes=boxes,
        defective=bool(boxes),
        decision_score=0.9 if boxes else 0.01,
        decision_threshold=0.5,
        model_name="m",
        model_version="v1",
        role=ModelRole.CHAMPION,
        outlier_score=0.1,
        outlier=False,
        captured_at=captured_at or datetime.now(UTC),
        queue_latency_ms=1,
        inference_latency_ms=1,
    )


def truth_prediction(site: str, truth: Truth, blob_uri: str) -> PredictionMade:
    """What a perfect champion predicts for a simulated frame stored at ``blob_uri`` (a local
    blob store names files by their SHA-256)."""
    boxes = tuple(
        ScoredBox(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h, score=0.9) for b in truth.boxes
    )
    return prediction(
        site,
        truth.image_id,
        boxes=boxes,
        size=(truth.width, truth.height),
        blob_uri=blob_uri,
        sha256=blob_uri.rsplit("/", 1)[1][:64],
    )


@dataclass(frozen=True)
class Harness:
    """Helpers for tests (conftest modules are not importable under importlib mode)."""

    run_service: object = run_service
    service_settings: object = service_settings
    end_offsets: object = end_offsets
    committed_past: object = committed_past
    prediction: object = prediction
    truth_prediction: object = truth_prediction


@pytest.fixture(scope="session")
def annsync() -> Harness:
    return Harness()
