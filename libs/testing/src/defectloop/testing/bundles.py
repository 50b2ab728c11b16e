"""Tiny model bundles that honour the bundle contract, built with ``onnx.helper`` in milliseconds.

The graph's heads are constants broadcast over the batch, so every image gets the same known
boxes; the embedding is ``mean(image) + arange(D) + salt`` so brighter images move it (outlier
tests) and each version has different bytes (and so a different sha256).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from defectloop.common.events import ModelDeployed, ModelRole
from defectloop.common.signing import sign_bundle
from defectloop.vision.manifest import (
    BundleManifest,
    Decoding,
    Lineage,
    Preprocessing,
    ReferenceStats,
    standard_io,
    write_bundle,
)

LABELS: tuple[str, ...] = ("scratch", "spot", "crack")
STRIDE = 4
EMBEDDING_DIM = 8
DEFAULT_INPUT: tuple[int, int] = (64, 64)

Box = tuple[int, float, float, float, float, float]
"""(class index, score, cx, cy, w, h) in network-input pixels."""

DEFAULT_BOXES: tuple[Box, ...] = ((0, 0.9, 18.0, 22.0, 10.0, 6.0), (2, 0.7, 45.5, 40.25, 8.0, 12.0))

Array = NDArray[np.float32]


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def heads_with_boxes(
    input_size: tuple[int, int],
    boxes: Sequence[Box],
    *,
    num_classes: int = len(LABELS),
    stride: int = STRIDE,
) -> tuple[Array, Array, Array]:
    """Head arrays (logits, size, offset; no batch axis) encoding ``boxes`` the way the trainer
    encodes its targets."""
    h, w = input_size
    gh, gw = h // stride, w // stride
    logits = np.full((num_classes, gh, gw), logit(0.01), np.float32)
    size = np.zeros((2, gh, gw), np.float32)
    offset = np.zeros((2, gh, gw), np.float32)
    for cls, score, cx, cy, bw, bh in boxes:
        xc, yc = int(cx // stride), int(cy // stride)
        logits[cls, yc, xc] = logit(score)
        size[:, yc, xc] = (bw, bh)
        offset[:, yc, xc] = (cx / stride - xc, cy / stride - yc)
    return logits, size, offset


def tiny_onnx(
    input_size: tuple[int, int],
    logits: Array,
    size: Array,
    offset: Array,
    *,
    stride: int = STRIDE,
    embedding_dim: int = EMBEDDING_DIM,
    salt: float = 0.0,
) -> bytes:
    """The serialized graph: heatmap = sigmoid(0 * avgpool(image) + logits); size/offset the
    same with constants; embedding = mean(image) * ones[D] + arange(D) + salt."""
    h, w = input_size
    c = logits.shape[0]
    gh, gw = h // stride, w // stride
    emb_bias = np.arange(embedding_dim, dtype=np.float32)[None] + np.float32(salt)
    inits = [
        numpy_helper.from_array(logits[None].astype(np.float32), "logits"),
        numpy_helper.from_array(size[None].astype(np.float32), "size_c"),
        numpy_helper.from_array(offset[None].astype(np.float32), "offset_c"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
        numpy_helper.from_array(np.ones((1, embedding_dim), np.float32), "emb_gain"),
        numpy_helper.from_array(emb_bias, "emb_bias"),
    ]
    nodes = [
        helper.make_node(
            "AveragePool", ["image"], ["pooled"], kernel_shape=[stride] * 2, strides=[stride] * 2
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
            helper.make_tensor_value_info("embedding", f, ["N", embedding_dim]),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def tiny_manifest(
    input_size: tuple[int, int] = DEFAULT_INPUT,
    *,
    labels: Sequence[str] = LABELS,
    decoding: Decoding | None = None,
    reference_stats: ReferenceStats | None = None,
    embedding_dim: int = EMBEDDING_DIM,
    version: str = "v1",
) -> BundleManifest:
    inputs, outputs = standard_io(input_size, len(labels), embedding_dim)
    return BundleManifest(
        name="tiny",
        version=version,
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(input_size=input_size, mean=0.5, std=0.25),
        labels=list(labels),
        decoding=decoding or Decoding(),
        reference_stats=reference_stats,
        lineage=Lineage(
            dataset_version="ds-1",
            git_commit="abc123",
            config={"lr": 0.001, "epochs": 3},
            config_sha256="0" * 64,
            seed=7,
            parent=None,
            lockfile_sha256="1" * 64,
        ),
        metrics={"map50": 0.5},
    )


@dataclass(frozen=True)
class TinyBundle:
    """A bundle written on disk: its directory, version and the model's sha256."""

    path: Path
    version: str
    sha256: str

    def deployed(
        self, site: str, role: ModelRole = ModelRole.CHAMPION, **overrides: Any
    ) -> ModelDeployed:
        """The ``model.deployed`` event that serves this bundle at ``site`` (fields overridable)."""
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


class BundleBuilder:
    """Writes tiny bundles under ``root``, each in a directory of its own.

    In a conftest: ``make_bundle = pytest.fixture(lambda tmp_path: BundleBuilder(tmp_path))``.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._serial = count()

    def __call__(
        self,
        version: str = "v1",
        boxes: Sequence[Box] | None = None,
        *,
        input_size: tuple[int, int] = DEFAULT_INPUT,
        labels: Sequence[str] = LABELS,
        decoding: Decoding | None = None,
        reference_stats: ReferenceStats | None = None,
        embedding_dim: int = EMBEDDING_DIM,
        signed: bool = True,
    ) -> TinyBundle:
        """A new bundle; ``signed`` (the default): signed with the project key, as the trainer
        signs what it registers, so inference accepts it."""
        logits, size, offset = heads_with_boxes(
            input_size, DEFAULT_BOXES if boxes is None else boxes, num_classes=len(labels)
        )
        model = tiny_onnx(
            input_size,
            logits,
            size,
            offset,
            embedding_dim=embedding_dim,
            # Different versions must have different bytes: the sha256 identifies a model.
            salt=zlib.crc32(version.encode()) / 2**32,
        )
        manifest = tiny_manifest(
            input_size,
            labels=labels,
            decoding=decoding,
            reference_stats=reference_stats,
            embedding_dim=embedding_dim,
            version=version,
        )
        directory = self.root / "bundles" / f"{version}-{next(self._serial)}"
        stored = write_bundle(directory, model, manifest)
        if signed:
            sign_bundle(directory)
        return TinyBundle(directory, version, stored.sha256)
