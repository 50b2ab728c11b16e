"""Fixtures for the inference tests: tiny contract-conforming bundles, blobs, events, a service.

The tiny ONNX model follows the bundle contract (input ``image``; outputs heatmap, size, offset,
embedding) with constant heads, so every image gets the same known boxes; built with onnx.helper.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI
from onnx import TensorProto, helper, numpy_helper

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import (
    DeadLetter,
    ImageCaptured,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    image_id_for,
    sha256_hex,
)
from defectloop.inference.main import build_app
from defectloop.inference.settings import InferenceSettings
from defectloop.vision.manifest import (
    BundleManifest,
    Decoding,
    Lineage,
    Preprocessing,
    standard_io,
    write_bundle,
)

LABELS = ["scratch", "spot", "crack"]
INPUT_SIZE = (32, 32)
STRIDE = 4
# (class, score, cx, cy, w, h) in network-input pixels
BOXES = [(0, 0.9, 10.0, 14.0, 8.0, 4.0)]


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def tiny_onnx(boxes: list[tuple[int, float, float, float, float, float]], bias: float) -> bytes:
    """Constant heads encoding ``boxes``; ``bias`` changes the bytes (and so the sha256)."""
    h, w = INPUT_SIZE
    gh, gw, c, dim = h // STRIDE, w // STRIDE, len(LABELS), 4
    logits = np.full((c, gh, gw), _logit(0.01), np.float32)
    size = np.zeros((2, gh, gw), np.float32)
    offset = np.zeros((2, gh, gw), np.float32)
    for cls, score, cx, cy, bw, bh in boxes:
        xc, yc = int(cx // STRIDE), int(cy // STRIDE)
        logits[cls, yc, xc] = _logit(score)
        size[:, yc, xc] = (bw, bh)
        offset[:, yc, xc] = (cx / STRIDE - xc, cy / STRIDE - yc)
    inits = [
        numpy_helper.from_array(logits[None], "logits"),
        numpy_helper.from_array(size[None], "size_c"),
        numpy_helper.from_array(offset[None], "offset_c"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
        numpy_helper.from_array(np.ones((1, dim), np.float32), "emb_gain"),
        numpy_helper.from_array(np.full((1, dim), bias, np.float32), "emb_bias"),
    ]
    nodes = [
        helper.make_node(
            "AveragePool", ["image"], ["pooled"], kernel_shape=[STRIDE] * 2, strides=[STRIDE] * 2
        ),
        helper.make_node("Mul", ["pooled", "zero"], ["zeros"]),
        helper.make_node("Add", ["zeros", "logits"], ["heat_logits"]),
        helper.make_node("Sigmoid", ["heat_logits"], ["heatmap"]),
        helper.make_node("Add", ["zeros", "size_c"], ["size"]),
        helper.make_node("Add", ["zeros", "offset_c"], ["offset"]),
        helper.make_node("ReduceMean", ["image"], ["img_mean4"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Flatten", ["img_mean4"], ["img_mean"], axis=1),
        helper.make_node("Mul", ["img_mean", "emb_gain"], ["emb_scaled"]),
        helper.make_node("Add", ["emb_scaled", "emb_bias"], ["embedding"]),
    ]
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes,
        "tiny_centernet",
        [helper.make_tensor_value_info("image", f, ["N", 1, h, w])],
        [
            helper.make_tensor_value_info("heatmap", f, ["N", c, gh, gw]),
            helper.make_tensor_value_info("size", f, ["N", 2, gh, gw]),
            helper.make_tensor_value_info("offset", f, ["N", 2, gh, gw]),
            helper.make_tensor_value_info("embedding", f, ["N", dim]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def manifest_for(version: str) -> BundleManifest:
    inputs, outputs = standard_io(INPUT_SIZE, len(LABELS), 4)
    return BundleManifest(
        name="tiny",
        version=version,
        created_at=datetime(2025, 1, 2, tzinfo=UTC),
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(input_size=INPUT_SIZE),
        labels=LABELS,
        decoding=Decoding(),
        lineage=Lineage(
            dataset_version="ds",
            git_commit="abc",
            config_sha256="0" * 64,
            seed=1,
            lockfile_sha256="1" * 64,
        ),
    )


@dataclass(frozen=True)
class Bundle:
    path: Path
    version: str
    sha256: str

    def deployed(
        self, site: str, role: ModelRole = ModelRole.CHAMPION, **overrides: Any
    ) -> ModelDeployed:
        fields: dict[str, Any] = {
            "site_id": site,
            "role": role,
            "model_name": "tiny",
            "model_version": self.version,
            "artifact_uri": self.path.as_uri(),
            "sha256": self.sha256,
        }
        fields.update(overrides)
        return ModelDeployed(**fields)


BundleFactory = Callable[..., Bundle]


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    def factory(
        version: str = "v1",
        boxes: list[tuple[int, float, float, float, float, float]] | None = None,
    ) -> Bundle:
        directory = tmp_path / "bundles" / f"{version}-{uuid.uuid4().hex[:6]}"
        bias = float(sum(ord(ch) for ch in version))
        stored = write_bundle(
            directory, tiny_onnx(BOXES if boxes is None else boxes, bias), manifest_for(version)
        )
        return Bundle(directory, version, stored.sha256)

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
    predictions: list[PredictionMade] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait(self, predicate: Callable[[Outputs], bool], timeout: float = 60.0) -> None:
        async def _wait() -> None:
            async with self.changed:
                await self.changed.wait_for(lambda: predicate(self))

        await asyncio.wait_for(_wait(), timeout)

    def champion(self) -> list[PredictionMade]:
        return [p for p in self.predictions if p.role == ModelRole.CHAMPION]


@pytest.fixture
async def outputs(kafka_bootstrap: str, site: str) -> AsyncIterator[Outputs]:
    consumer = AIOKafkaConsumer(
        topics.PREDICTION_MADE,
        topics.dlq_topic(topics.IMAGE_CAPTURED),
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found = Outputs(site)

    async def collect() -> None:
        async for record in consumer:
            item: PredictionMade | DeadLetter
            if record.topic == topics.PREDICTION_MADE:
                item = PredictionMade.model_validate_json(record.value)
                if item.site_id != site:
                    continue
                target: list[Any] = found.predictions
            else:
                item = DeadLetter.model_validate_json(record.value)
                if item.site_id != site:
                    continue
                target = found.dead_letters
            async with found.changed:
                target.append(item)
                found.changed.notify_all()

    task = asyncio.get_running_loop().create_task(collect())
    try:
        yield found
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()
