from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from defectloop.vision.metrics import ImageBoxes, average_precision, decision_metrics

pytestmark = pytest.mark.unit


def gt(boxes: list[list[float]], labels: list[int]) -> ImageBoxes:
    return ImageBoxes.from_lists(boxes, labels)


def pred(boxes: list[list[float]], labels: list[int], scores: list[float]) -> ImageBoxes:
    return ImageBoxes.from_lists(boxes, labels, scores)


def test_perfect_predictions_give_ap_one() -> None:
    truths = [gt([[0, 0, 10, 10], [20, 20, 5, 8]], [0, 1]), gt([[3, 3, 4, 4]], [1])]
    preds = [pred(t.boxes.tolist(), t.labels.tolist(), [0.9] * len(t)) for t in truths]
    result = average_precision(preds, truths, num_classes=2)
    assert result.per_class == [pytest.approx(1.0), pytest.approx(1.0)]
    assert result.mean_ap == pytest.approx(1.0)


def test_hand_computed_ap_with_a_false_positive_between_two_hits() -> None:
    truths = [gt([[0, 0, 10, 10], [50, 50, 10, 10]], [0, 0])]
    # ranks: hit (P=1, R=.5), miss (P=.5), hit (P=2/3, R=1); interpolated: 1 to R=.5, then 2/3
    preds = [pred([[0, 0, 10, 10], [30, 30, 10, 10], [50, 50, 10, 10]], [0, 0, 0], [0.9, 0.8, 0.7])]
    result = average_precision(preds, truths, num_classes=1)
    assert result.mean_ap == pytest.approx((51 * 1.0 + 50 * 2 / 3) / 101)


def test_low_iou_detection_is_a_false_positive() -> None:
    truths = [gt([[0, 0, 10, 10]], [0])]
    preds = [pred([[5, 0, 10, 10]], [0], [0.9])]  # IoU = 50 / 150 = 1/3
    assert average_precision(preds, truths, num_classes=1).mean_ap == 0.0


def test_duplicate_detection_counts_once() -> None:
    truths = [gt([[0, 0, 10, 10]], [0])]
    preds = [pred([[0, 0, 10, 10], [0, 0, 10, 10]], [0, 0], [0.9, 0.8])]
    assert average_precision(preds, truths, num_classes=1).mean_ap == pytest.approx(1.0)


def test_classes_without_ground_truth_are_left_out_of_the_mean() -> None:
    truths = [gt([[0, 0, 10, 10]], [0])]
    preds = [pred([[0, 0, 10, 10], [40, 40, 5, 5]], [0, 1], [0.9, 0.95])]
    result = average_precision(preds, truths, num_classes=2)
    assert result.per_class == [pytest.approx(1.0), None]
    assert result.mean_ap == pytest.approx(1.0)


def test_wrong_class_is_a_miss() -> None:
    truths = [gt([[0, 0, 10, 10]], [0])]
    preds = [pred([[0, 0, 10, 10]], [1], [0.9])]
    assert average_precision(preds, truths, num_classes=2).per_class == [0.0, None]


def random_case(
    seed: int, n_images: int = 30, n_classes: int = 3
) -> tuple[list[ImageBoxes], list[ImageBoxes]]:
    rng = np.random.default_rng(seed)
    truths, preds = [], []
    for _ in range(n_images):
        k = int(rng.integers(0, 5))
        boxes = np.column_stack([rng.uniform(0, 200, (k, 2)), rng.uniform(5, 60, (k, 2))])
        labels = rng.integers(0, n_classes, k)
        truths.append(ImageBoxes(boxes=boxes, labels=labels))
        keep = rng.random(k) < 0.8  # some misses
        jitter = rng.normal(0, 4, (k, 4))
        d_boxes = (boxes + jitter)[keep]
        d_labels = np.where(rng.random(k) < 0.9, labels, rng.integers(0, n_classes, k))[keep]
        m = int(rng.integers(0, 4))  # false positives
        fp_boxes = np.column_stack([rng.uniform(0, 200, (m, 2)), rng.uniform(5, 60, (m, 2))])
        all_boxes = np.concatenate([d_boxes, fp_boxes])
        all_boxes[:, 2:] = np.abs(all_boxes[:, 2:]) + 1
        preds.append(
            ImageBoxes(
                boxes=all_boxes,
                labels=np.concatenate([d_labels, rng.integers(0, n_classes, m)]),
                scores=rng.random(len(all_boxes)),
            )
        )
    return truths, preds


def pycocotools_ap(
    truths: list[ImageBoxes], preds: list[ImageBoxes], n_classes: int, max_dets: int
) -> list[float | None]:
    images = [{"id": i + 1, "width": 300, "height": 300} for i in range(len(truths))]
    annotations = []
    for i, t in enumerate(truths):
        for b, c in zip(t.boxes, t.labels, strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(c) + 1,
                    "bbox": b.tolist(),
                    "area": float(b[2] * b[3]),
                    "iscrowd": 0,
                }
            )
    results = [
        {"image_id": i + 1, "category_id": int(c) + 1, "bbox": b.tolist(), "score": float(s)}
        for i, p in enumerate(preds)
        for b, c, s in zip(p.boxes, p.labels, p.scores, strict=True)
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c + 1, "name": f"c{c}"} for c in range(n_classes)],
        }
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [max_dets]
        evaluator.params.areaRng = [[0, 1e10]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][0, :, :, 0, 0]  # [recall, class]
    return [None if (col < 0).all() else float(col.mean()) for col in precision.T]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_per_class_ap_agrees_with_pycocotools(seed: int) -> None:
    truths, preds = random_case(seed)
    ours = average_precision(preds, truths, num_classes=3, max_dets=100)
    theirs = pycocotools_ap(truths, preds, n_classes=3, max_dets=100)
    assert [a is None for a in ours.per_class] == [t is None for t in theirs]
    np.testing.assert_allclose(
        [a for a in ours.per_class if a is not None],
        [t for t in theirs if t is not None],
        atol=1e-9,
    )
    assert 0.0 < ours.mean_ap < 1.0


def test_max_dets_caps_detections_per_image_and_class_like_pycocotools() -> None:
    truths, preds = random_case(7)
    ours = average_precision(preds, truths, num_classes=3, max_dets=1)
    theirs = pycocotools_ap(truths, preds, n_classes=3, max_dets=1)
    np.testing.assert_allclose(
        [a for a in ours.per_class if a is not None],
        [t for t in theirs if t is not None],
        atol=1e-9,
    )


def test_decision_metrics_count_image_level_outcomes() -> None:
    metrics = decision_metrics([True, True, False, False, True], [True, False, True, False, True])
    assert (metrics.tp, metrics.fp, metrics.fn, metrics.tn) == (2, 1, 1, 1)
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.recall == pytest.approx(2 / 3)
    assert metrics.f1 == pytest.approx(2 / 3)


def test_decision_metrics_are_zero_when_undefined() -> None:
    metrics = decision_metrics([False, False], [False, False])
    assert (metrics.precision, metrics.recall, metrics.f1) == (0.0, 0.0, 0.0)
