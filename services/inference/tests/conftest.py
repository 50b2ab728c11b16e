"""Fixtures for the inference tests: tiny contract-conforming bundles, blobs, events, a service.

The tiny bundles come from :mod:`defectloop.testing.bundles` (constant heads: every image gets
the same known box); here with a 32x32 input and one box at (cx 10, cy 14, w 8, h 4).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import (
    DeadLetter,
    ImageCaptured,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    image_id_for,
    sha256_hex,
)
from defectloop.inference.main import build_app
from defectloop.inference.settings import InferenceSettings
from defectloop.testing.bundles import Box, BundleBuilder, TinyBundle
from defectloop.testing.kafka import TopicCollector, collect, started_broker

INPUT_SIZE = (32, 32)
# (class, score, cx, cy, w, h) in network-input pixels
BOXES: list[Box] = [(0, 0.9, 10.0, 14.0, 8.0, 4.0)]

BundleFactory = Callable[..., TinyBundle]


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    builder = BundleBuilder(tmp_path)

    def factory(version: str = "v1", boxes: list[Box] | None = None) -> TinyBundle:
        return builder(version, BOXES if boxes is None else boxes, input_size=INPUT_SIZE)

    return factory


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def png_bytes(width: int, height: int, seed: int, *, channels: int = 1) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width) if channels == 1 else (height, width, channels)
    ok, buf = cv2.imencode(".png", rng.integers(0, 256, shape, dtype=np.uint8))
    assert ok
    return bytes(buf)


ImageFactory = Callable[..., ImageCaptured]


@pytest.fixture
def make_image(store: LocalBlobStore) -> ImageFactory:
    """An ``image.captured`` event whose PNG (unique bytes per seed) is in ``store``."""
    seeds = iter(range(10**6))

    def factory(
        site: str,
        camera: str = "cam-1",
        *,
        width: int = 64,
        height: int = 48,
        data: bytes | None = None,
        store_blob: bool = True,
    ) -> ImageCaptured:
        body = data if data is not None else png_bytes(width, height, next(seeds))
        digest = sha256_hex(body)
        if store_blob:
            uri = store.put(body, suffix=".png")
        else:
            uri = (store.root / digest[:2] / digest[2:4] / f"{digest}.png").as_uri()
        return ImageCaptured(
            site_id=site,
            camera_id=camera,
            image_id=image_id_for(site, camera, digest),
            sha256=digest,
            blob_uri=uri,
            captured_at=datetime.now(UTC),
            width=width,
            height=height,
            quality=QualityMetrics(sharpness=10.0, brightness=100.0, contrast=20.0, uniform=False),
        )

    return factory


@pytest.fixture
def site() -> str:
    return "inf" + uuid.uuid4().hex[:10]


@pytest.fixture
def settings_for(
    kafka_bootstrap: str, store: LocalBlobStore, unique_group: str
) -> Callable[..., InferenceSettings]:
    def factory(**overrides: Any) -> InferenceSettings:
        values: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "blob_url": store.root.as_uri(),
            "group_id": unique_group,
            "providers": "cpu",
            "intra_op_threads": 1,
            "decode_workers": 2,
            "max_batch": 8,
            "max_wait_ms": 10,
        }
        values.update(overrides)
        return InferenceSettings(**values)

    return factory


@asynccontextmanager
async def running(settings: InferenceSettings, **kwargs: Any) -> AsyncIterator[FastAPI]:
    """The service app with its lifespan entered and its model table read."""
    app = build_app(settings, **kwargs)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.router.ready.wait(), 60)
        yield app


@pytest.fixture
def run_service() -> Callable[[InferenceSettings], Any]:
    return running


@dataclass
class Outputs:
    """Predictions and dead letters of one site, read from the real topics (no group)."""

    site: str
    collector: TopicCollector[Any]

    @property
    def predictions(self) -> list[PredictionMade]:
        return self.collector.of(PredictionMade)

    @property
    def dead_letters(self) -> list[DeadLetter]:
        return self.collector.of(DeadLetter)

    async def wait(self, predicate: Callable[[Outputs], bool], timeout: float = 60.0) -> None:
        await self.collector.wait_for(lambda _: predicate(self), timeout)

    def champion(self) -> list[PredictionMade]:
        return [p for p in self.predictions if p.role == ModelRole.CHAMPION]


@pytest.fixture
async def outputs(kafka_bootstrap: str, site: str) -> AsyncIterator[Outputs]:
    async with collect(
        kafka_bootstrap,
        [topics.PREDICTION_MADE, topics.dlq_topic(topics.IMAGE_CAPTURED)],
        where=lambda item: item.site_id == site,
    ) as collector:
        yield Outputs(site, collector)


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[KafkaBroker]:
    async with started_broker(kafka_bootstrap, "inference-test-producer") as broker:
        yield broker
