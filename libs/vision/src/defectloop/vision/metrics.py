"""Detection and decision metrics, computed the way pycocotools does (so numbers compare).

Box level, per class: detections of each image are sorted by score and capped at ``max_dets``;
each is greedily matched to the unmatched ground-truth box of the same class with the highest
IoU >= ``iou_threshold``; over all images, detections are ranked by score (stable), precision is
made monotone, and AP is the mean of the precision at 101 recall points 0, 0.01, ..., 1 (COCO's
interpolated AP). mAP averages the classes that have at least one ground-truth box.

Image level: an image is truly defective when it has >= 1 ground-truth box, predicted defective
when its decision says so; precision, recall and F1 of that binary decision (0 when undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from defectloop.common.errors import InvalidInputError

RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True, slots=True)
class ImageBoxes:
    """Boxes of one image: ``[K, 4]`` COCO ``x, y, w, h`` pixels, class indices, scores."""

    boxes: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int64]
    scores: npt.NDArray[np.float64] = field(default_factory=lambda: np.empty(0))

    @classmethod
    def from_lists(
        cls,
        boxes: Sequence[Sequence[float]],
        labels: Sequence[int],
        scores: Sequence[float] | None = None,
    ) -> ImageBoxes:
        return cls(
            boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
            labels=np.asarray(labels, dtype=np.int64).reshape(-1),
            scores=np.asarray(scores if scores is not None else [], dtype=np.float64).reshape(-1),
        )

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


@dataclass(frozen=True, slots=True)
class APResult:
    """AP per class (``None`` for a class without ground truth) and their mean."""

    mean_ap: float
    per_class: list[float | None]
    n_ground_truth: list[int]


@dataclass(frozen=True, slots=True)
class DecisionMetrics:
    """Image-level binary decision metrics and the confusion counts behind them."""

    precision: float
    recall: float
    f1: float
    tp: int
    fp: int
    fn: int
    tn: int


def _iou_xywh(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """IoU of xywh boxes in float64 (pycocotools computes in double)."""
    ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
    bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.minimum(ax2[:, None], bx2[None, :]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(ay2[:, None], by2[None, :]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _match_image(
    dt_boxes: npt.NDArray[np.float64],
    gt_boxes: npt.NDArray[np.float64],
    iou_threshold: float,
) -> npt.NDArray[np.bool_]:
    """True-positive flags of score-sorted detections against one image's boxes of one class."""
    tp = np.zeros(len(dt_boxes), dtype=bool)
    if len(dt_boxes) == 0 or len(gt_boxes) == 0:
        return tp
    ious = _iou_xywh(dt_boxes, gt_boxes)
    matched = np.zeros(len(gt_boxes), dtype=bool)
    floor = min(iou_threshold, 1 - 1e-10)
    for d in range(len(dt_boxes)):
        candidates = np.where(matched, -1.0, ious[d])
        # pycocotools keeps the last gt among equal best IoUs
        best = len(candidates) - 1 - int(np.argmax(candidates[::-1]))
        if candidates[best] >= floor:
            matched[best] = True
            tp[d] = True
    return tp


def interpolated_ap(tp_sorted: npt.NDArray[np.bool_], n_ground_truth: int) -> float:
    """COCO 101-point AP of score-ranked true/false positive flags."""
    tps = np.cumsum(tp_sorted, dtype=np.float64)
    fps = np.cumsum(~tp_sorted, dtype=np.float64)
    recall = tps / n_ground_truth
    precision = tps / (tps + fps + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, RECALL_POINTS, side="left")
    q = np.zeros(len(RECALL_POINTS))
    valid = idx < len(precision)
    q[valid] = precision[idx[valid]]
    return float(q.mean())


def average_precision(
    predictions: Sequence[ImageBoxes],
    ground_truths: Sequence[ImageBoxes],
    num_classes: int,
    *,
    iou_threshold: float = 0.5,
    max_dets: int = 100,
) -> APResult:
    """Per-class COCO-interpolated AP at one IoU threshold, and the mean over classes with GT."""
    if len(predictions) != len(ground_truths):
        raise InvalidInputError(
            f"{len(predictions)} prediction sets for {len(ground_truths)} ground-truth sets"
        )
    scores: list[list[npt.NDArray[np.float64]]] = [[] for _ in range(num_classes)]
    flags: list[list[npt.NDArray[np.bool_]]] = [[] for _ in range(num_classes)]
    n_gt = [0] * num_classes
    for pred, gt in zip(predictions, ground_truths, strict=True):
        if len(pred.scores) != len(pred):
            raise InvalidInputError("every predicted box needs a score")
        for c in range(num_classes):
            gt_c = gt.boxes[gt.labels == c]
            n_gt[c] += len(gt_c)
            mask = pred.labels == c
            order = np.argsort(-pred.scores[mask], kind="mergesort")[:max_dets]
            dt_c, sc_c = pred.boxes[mask][order], pred.scores[mask][order]
            scores[c].append(sc_c)
            flags[c].append(_match_image(dt_c, gt_c, iou_threshold))
    per_class: list[float | None] = []
    for c in range(num_classes):
        if n_gt[c] == 0:
            per_class.append(None)
            continue
        all_scores = np.concatenate(scores[c]) if scores[c] else np.empty(0)
        all_flags = np.concatenate(flags[c]) if flags[c] else np.empty(0, dtype=bool)
        order = np.argsort(-all_scores, kind="mergesort")
        per_class.append(interpolated_ap(all_flags[order], n_gt[c]))
    present = [ap for ap in per_class if ap is not None]
    mean_ap = float(np.mean(present)) if present else 0.0
    return APResult(mean_ap=mean_ap, per_class=per_class, n_ground_truth=n_gt)


def decision_metrics(predicted: npt.ArrayLike, actual: npt.ArrayLike) -> DecisionMetrics:
    """Precision/recall/F1 of a binary image-level decision (``True`` = defective)."""
    pred = np.asarray(predicted, dtype=bool).reshape(-1)
    true = np.asarray(actual, dtype=bool).reshape(-1)
    if pred.shape != true.shape:
        raise InvalidInputError(f"{pred.size} decisions for {true.size} ground-truth labels")
    tp = int(np.sum(pred & true))
    fp = int(np.sum(pred & ~true))
    fn = int(np.sum(~pred & true))
    tn = int(np.sum(~pred & ~true))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return DecisionMetrics(precision=precision, recall=recall, f1=f1, tp=tp, fp=fp, fn=fn, tn=tn)
