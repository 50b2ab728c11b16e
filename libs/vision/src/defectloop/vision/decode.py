"""CenterNet decoding in numpy: heatmap peaks → boxes in original-image pixels → class-wise NMS.

Geometry (the contract the trainer encodes targets with): for a peak at output cell
``(x_cell, y_cell)`` the box centre in input pixels is ``((x_cell + dx) * stride,
(y_cell + dy) * stride)`` where ``(dx, dy)`` is the ``offset`` output there; its size in input
pixels is the ``size`` output ``(w, h)`` there. Boxes are then scaled per axis to the original
image and clipped to it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from defectloop.common.errors import InvalidInputError
from defectloop.vision.manifest import Decoding

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Detection:
    """One box in original-image pixels: top-left (x, y), width w, height h."""

    label: str
    category_id: int
    score: float
    x: float
    y: float
    w: float
    h: float

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """COCO ``[x, y, w, h]``."""
        return (self.x, self.y, self.w, self.h)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "category_id": self.category_id,
            "score": self.score,
            "x": self.x,
            "y": self.y,
            "w": self.w,
            "h": self.h,
        }


@dataclass(frozen=True, slots=True)
class DecodedImage:
    """Decoded boxes of one image plus its image-level decision."""

    detections: list[Detection] = field(default_factory=list)
    max_score: float = 0.0
    """Highest heatmap value of the image (also below ``score_threshold``: a calibrated
    image-level score for monitoring)."""
    defective: bool = False
    """``max_score >= decision_threshold``."""


def local_maxima(heatmap: FloatArray) -> npt.NDArray[np.bool_]:
    """Mask of cells equal to the max of their 3x3 neighbourhood (per image and class)."""
    padded = np.pad(heatmap, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    h, w = heatmap.shape[2:]
    pooled = padded[:, :, 1 : h + 1, 1 : w + 1].copy()
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy != 1 or dx != 1:
                np.maximum(pooled, padded[:, :, dy : dy + h, dx : dx + w], out=pooled)
    return heatmap >= pooled


def box_iou(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU matrix of ``[K, 4]`` and ``[M, 4]`` boxes in ``x1, y1, x2, y2``."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0).astype(np.float32)


def nms(
    boxes: FloatArray, scores: FloatArray, classes: npt.NDArray[np.int64], iou_threshold: float
) -> npt.NDArray[np.int64]:
    """Greedy class-wise NMS; returns kept indices ordered by descending score."""
    order = np.argsort(-scores, kind="stable")
    boxes, classes = boxes[order], classes[order]
    overlap = box_iou(boxes, boxes) > iou_threshold
    overlap &= classes[:, None] == classes[None, :]
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for i in range(len(order)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= overlap[i]
    return order[np.asarray(keep, dtype=np.int64)]


def decode_batch(
    heatmap: FloatArray,
    size: FloatArray,
    offset: FloatArray,
    *,
    labels: Sequence[str],
    decoding: Decoding,
    scales: FloatArray,
    image_sizes: npt.NDArray[np.int64],
    score_threshold: float | None = None,
) -> list[DecodedImage]:
    """Decode raw head outputs of a batch.

    ``scales`` is ``[N, 2]`` (orig_w / W_in, orig_h / H_in); ``image_sizes`` is ``[N, 2]``
    (orig_w, orig_h). ``score_threshold`` overrides ``decoding.score_threshold`` (evaluation).
    """
    n, c, gh, gw = heatmap.shape
    if c != len(labels):
        raise InvalidInputError(f"heatmap has {c} channels but the bundle has {len(labels)} labels")
    if size.shape != (n, 2, gh, gw) or offset.shape != (n, 2, gh, gw):
        raise InvalidInputError(
            f"size {size.shape} / offset {offset.shape} do not match heatmap {heatmap.shape}"
        )
    threshold = decoding.score_threshold if score_threshold is None else score_threshold
    stride = float(decoding.stride)

    peaks = np.where(local_maxima(heatmap), heatmap, -1.0).reshape(n, -1)
    k = min(decoding.top_k, peaks.shape[1])
    top = np.argpartition(-peaks, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(peaks, top, axis=1)
    max_scores = heatmap.reshape(n, -1).max(axis=1)

    results: list[DecodedImage] = []
    for i in range(n):
        sel = top_scores[i] >= threshold
        idx, scores = top[i][sel], top_scores[i][sel].astype(np.float32)
        cls, cell = np.divmod(idx, gh * gw)
        ys, xs = np.divmod(cell, gw)
        cx = (xs + offset[i, 0, ys, xs]) * stride
        cy = (ys + offset[i, 1, ys, xs]) * stride
        bw, bh = size[i, 0, ys, xs], size[i, 1, ys, xs]
        sx, sy = float(scales[i, 0]), float(scales[i, 1])
        ow, oh = float(image_sizes[i, 0]), float(image_sizes[i, 1])
        boxes = np.stack(
            [
                np.clip((cx - bw / 2) * sx, 0, ow),
                np.clip((cy - bh / 2) * sy, 0, oh),
                np.clip((cx + bw / 2) * sx, 0, ow),
                np.clip((cy + bh / 2) * sy, 0, oh),
            ],
            axis=1,
        ).astype(np.float32)
        valid = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        boxes, scores, cls = boxes[valid], scores[valid], cls[valid]
        kept = nms(boxes, scores, cls, decoding.nms_iou) if len(scores) else np.empty(0, np.int64)
        detections = [
            Detection(
                label=labels[int(cls[j])],
                category_id=int(cls[j]) + 1,
                score=float(scores[j]),
                x=float(boxes[j, 0]),
                y=float(boxes[j, 1]),
                w=float(boxes[j, 2] - boxes[j, 0]),
                h=float(boxes[j, 3] - boxes[j, 1]),
            )
            for j in kept
        ]
        max_score = float(max_scores[i])
        results.append(
            DecodedImage(
                detections=detections,
                max_score=max_score,
                defective=max_score >= decoding.decision_threshold,
            )
        )
    return results
