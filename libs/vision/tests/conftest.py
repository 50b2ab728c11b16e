"""Fixtures for defectloop.vision tests: tiny contract-conforming ONNX models (onnx.helper)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from defectloop.vision.manifest import (
    BundleManifest,
    Decoding,
    Lineage,
    Preprocessing,
    ReferenceStats,
    standard_io,
    write_bundle,
)

LABELS = ["scratch", "spot", "crack"]


def tiny_onnx(
    input_size: tuple[int, int],
    logits: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    *,
    stride: int = 4,
    embedding_dim: int = 8,
) -> bytes:
    """A graph honouring the contract whose heads are constants broadcast over the batch.

    heatmap = sigmoid(0 * avgpool(image) + logits); size/offset = 0 * avgpool + const;
    embedding = mean(image) * ones[D] + arange(D) (so brighter images move the embedding).
    """
    h, w = input_size
    c = logits.shape[0]
    gh, gw = h // stride, w // stride
    inits = [
        numpy_helper.from_array(logits[None].astype(np.float32), "logits"),
        numpy_helper.from_array(size[None].astype(np.float32), "size_c"),
        numpy_helper.from_array(offset[None].astype(np.float32), "offset_c"),
        numpy_helper.from_array(np.zeros((1,), np.float32), "zero"),
        numpy_helper.from_array(np.ones((1, embedding_dim), np.float32), "emb_gain"),
        numpy_helper.from_array(np.arange(embedding_dim, dtype=np.float32)[None], "emb_bias"),
    ]
    nodes = [
        helper.make_node(
            "AveragePool",
            ["image"],
            ["pooled"],
            kernel_shape=[stride, stride],
            strides=[stride, stride],
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
    return model.SerializeToString()


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def heads_with_boxes(
    input_size: tuple[int, int],
    boxes: list[tuple[int, float, float, float, float, float]],
    *,
    num_classes: int = len(LABELS),
    stride: int = 4,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Head arrays (logits, size, offset; no batch axis) encoding boxes given as
    (class, score, cx, cy, w, h) in input pixels — the trainer's target encoding."""
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


def make_manifest(
    input_size: tuple[int, int],
    *,
    labels: list[str] | None = None,
    decoding: Decoding | None = None,
    reference_stats: ReferenceStats | None = None,
    embedding_dim: int = 8,
    version: str = "v1",
) -> BundleManifest:
    labels = labels or LABELS
    inputs, outputs = standard_io(input_size, len(labels), embedding_dim)
    return BundleManifest(
        name="tiny",
        version=version,
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        inputs=inputs,
        outputs=outputs,
        preprocessing=Preprocessing(input_size=input_size, mean=0.5, std=0.25),
        labels=labels,
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


BundleFactory = Callable[..., Path]

DEFAULT_INPUT = (64, 64)
DEFAULT_BOXES = [(0, 0.9, 18.0, 22.0, 10.0, 6.0), (2, 0.7, 45.5, 40.25, 8.0, 12.0)]


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    counter = iter(range(1000))

    def factory(
        boxes: list[tuple[int, float, float, float, float, float]] | None = None,
        *,
        input_size: tuple[int, int] = DEFAULT_INPUT,
        decoding: Decoding | None = None,
        reference_stats: ReferenceStats | None = None,
    ) -> Path:
        logits, size, offset = heads_with_boxes(
            input_size, DEFAULT_BOXES if boxes is None else boxes
        )
        directory = tmp_path / f"bundle{next(counter)}"
        write_bundle(
            directory,
            tiny_onnx(input_size, logits, size, offset),
            make_manifest(input_size, decoding=decoding, reference_stats=reference_stats),
        )
        return directory

    return factory


DatasetFactory = Callable[..., Path]

# DEFAULT_BOXES (input 64x64) seen in a 128x96 original image: x scaled by 2, y by 1.5
ORIGINAL_SIZE = (128, 96)
DEFAULT_BOXES_ORIGINAL = {"scratch": [26.0, 28.5, 20.0, 9.0], "crack": [83.0, 51.375, 16.0, 18.0]}


@pytest.fixture
def make_dataset(tmp_path: Path) -> DatasetFactory:
    """A COCO dataset dir; each image gets the given {category name: bbox} ground truth."""
    import cv2

    def factory(
        per_image: list[dict[str, list[float]]],
        *,
        categories: dict[str, int] | None = None,
        size: tuple[int, int] = ORIGINAL_SIZE,
    ) -> Path:
        root = tmp_path / "dataset"
        (root / "images").mkdir(parents=True)
        cats = categories or {"scratch": 3, "crack": 7}
        images, annotations = [], []
        for i, boxes in enumerate(per_image, start=1):
            name = f"img{i:03d}.png"
            cv2.imwrite(str(root / "images" / name), np.full((size[1], size[0]), 100, np.uint8))
            images.append({"id": i, "file_name": name, "width": size[0], "height": size[1]})
            for label, bbox in boxes.items():
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": cats[label],
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                    }
                )
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": cid, "name": name} for name, cid in cats.items()],
        }
        (root / "annotations.json").write_text(json.dumps(coco))
        return root

    return factory
