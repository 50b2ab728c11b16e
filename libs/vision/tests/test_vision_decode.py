from __future__ import annotations

import numpy as np
import pytest

from defectloop.vision.decode import decode_batch, local_maxima, nms
from defectloop.vision.manifest import Decoding

pytestmark = pytest.mark.unit

LABELS = ["scratch", "spot", "crack"]
STRIDE = 4
GRID = (16, 16)  # 64x64 input


def heads(
    boxes: list[tuple[int, float, float, float, float, float]], n: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batch head arrays from (class, score, cx, cy, w, h) in input pixels (same per image)."""
    gh, gw = GRID
    heat = np.zeros((n, len(LABELS), gh, gw), np.float32)
    size = np.zeros((n, 2, gh, gw), np.float32)
    offset = np.zeros((n, 2, gh, gw), np.float32)
    for cls, score, cx, cy, w, h in boxes:
        xc, yc = int(cx // STRIDE), int(cy // STRIDE)
        heat[:, cls, yc, xc] = score
        size[:, :, yc, xc] = np.array([w, h])[None]
        offset[:, :, yc, xc] = np.array([cx / STRIDE - xc, cy / STRIDE - yc])[None]
    return heat, size, offset


def decode(
    boxes: list[tuple[int, float, float, float, float, float]],
    *,
    n: int = 1,
    scales: tuple[float, float] = (1.0, 1.0),
    image_size: tuple[int, int] = (64, 64),
    decoding: Decoding | None = None,
) -> list:
    heat, size, offset = heads(boxes, n)
    return decode_batch(
        heat,
        size,
        offset,
        labels=LABELS,
        decoding=decoding or Decoding(),
        scales=np.tile(np.array(scales, np.float32), (n, 1)),
        image_sizes=np.tile(np.array(image_size, np.int64), (n, 1)),
    )


def test_round_trip_recovers_boxes_in_input_pixels() -> None:
    truth = [(0, 0.9, 18.0, 22.0, 10.0, 6.0), (2, 0.7, 45.5, 40.25, 8.0, 12.0)]
    (result,) = decode(truth)
    got = sorted((d.category_id - 1, d.score, d.x, d.y, d.w, d.h) for d in result.detections)
    want = sorted((c, s, cx - w / 2, cy - h / 2, w, h) for c, s, cx, cy, w, h in truth)
    np.testing.assert_allclose(np.array(got), np.array(want), atol=1e-3)
    assert [d.label for d in result.detections] == ["scratch", "crack"]


def test_boxes_are_scaled_per_axis_to_the_original_image() -> None:
    (result,) = decode([(1, 0.8, 20.0, 30.0, 8.0, 4.0)], scales=(2.0, 0.5), image_size=(128, 32))
    (det,) = result.detections
    np.testing.assert_allclose([det.x, det.y, det.w, det.h], [32.0, 14.0, 16.0, 2.0], atol=1e-3)


def test_boxes_are_clipped_to_the_image() -> None:
    (result,) = decode([(0, 0.8, 2.0, 62.0, 10.0, 10.0)])
    (det,) = result.detections
    np.testing.assert_allclose([det.x, det.y, det.w, det.h], [0.0, 57.0, 7.0, 7.0], atol=1e-3)


def test_scores_below_threshold_are_dropped() -> None:
    (result,) = decode([(0, 0.29, 18.0, 22.0, 10.0, 6.0), (1, 0.31, 40.0, 40.0, 8.0, 8.0)])
    assert [d.label for d in result.detections] == ["spot"]


def test_nms_removes_same_class_duplicates_but_keeps_other_classes() -> None:
    # two overlapping peaks of class 0 (two cells apart, same box size) and one of class 1 on top
    (result,) = decode(
        [
            (0, 0.9, 30.0, 30.0, 20.0, 20.0),
            (0, 0.8, 34.0, 30.0, 20.0, 20.0),
            (1, 0.6, 34.0, 38.0, 20.0, 20.0),
        ]
    )
    assert [(d.label, round(d.score, 3)) for d in result.detections] == [
        ("scratch", 0.9),
        ("spot", 0.6),
    ]


def test_top_k_caps_detections_keeping_the_highest_scores() -> None:
    truth = [(0, 0.4 + 0.05 * i, 6.0 + 12 * i, 6.0, 4.0, 4.0) for i in range(5)]
    (result,) = decode(truth, decoding=Decoding(top_k=3))
    assert [round(d.score, 3) for d in result.detections] == [0.6, 0.55, 0.5]


def test_batch_decodes_each_image_and_decides_per_image() -> None:
    heat, size, offset = heads([(0, 0.9, 18.0, 22.0, 10.0, 6.0)], n=2)
    heat[1] *= 0.5  # second image: score 0.45 — a box, but below the decision threshold
    results = decode_batch(
        heat,
        size,
        offset,
        labels=LABELS,
        decoding=Decoding(),
        scales=np.ones((2, 2), np.float32),
        image_sizes=np.full((2, 2), 64, np.int64),
    )
    assert [r.defective for r in results] == [True, False]
    assert [round(r.max_score, 3) for r in results] == [0.9, 0.45]
    assert [len(r.detections) for r in results] == [1, 1]


def test_local_maxima_keeps_only_3x3_peaks() -> None:
    heat = np.zeros((1, 1, 5, 5), np.float32)
    heat[0, 0, 2, 2] = 0.9
    heat[0, 0, 2, 3] = 0.5  # neighbour of a stronger peak
    heat[0, 0, 0, 0] = 0.4  # isolated corner peak
    mask = local_maxima(heat)[0, 0] & (heat[0, 0] > 0)
    assert sorted(zip(*np.nonzero(mask), strict=True)) == [(0, 0), (2, 2)]


def test_nms_returns_indices_in_descending_score_order() -> None:
    boxes = np.array([[0, 0, 10, 10], [50, 50, 60, 60], [1, 1, 11, 11]], np.float32)
    scores = np.array([0.5, 0.9, 0.7], np.float32)
    kept = nms(boxes, scores, np.zeros(3, np.int64), 0.5)
    assert kept.tolist() == [1, 2]
