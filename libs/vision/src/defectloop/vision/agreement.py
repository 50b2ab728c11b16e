"""Inter-annotator agreement, computed by us (the open-source Label Studio has none).

- Cohen's kappa on the image-level decision (defect / no defect) between two annotators.
- Box agreement: boxes of the two annotators matched one-to-one by IoU (Hungarian assignment,
  same label, IoU >= threshold); matched share = 2 x matches / (boxes of A + boxes of B), and the
  mean IoU of the matched pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from defectloop.common.events import Box


def iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a.x + a.w, b.x + b.w) - max(a.x, b.x))
    iy = max(0.0, min(a.y + a.h, b.y + b.h) - max(a.y, b.y))
    inter = ix * iy
    union = a.w * a.h + b.w * b.h - inter
    return inter / union if union > 0 else 0.0


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """Cohen's kappa of two raters' binary decisions; None without pairs.

    When both raters always give the same single answer, agreement by chance is 1 and kappa is
    undefined; it is reported as 1.0 (perfect agreement), the convention sklearn does not follow
    (it returns nan), so callers may want to check ``pe == 1`` themselves.
    """
    if len(a) != len(b):
        raise ValueError("both raters must rate the same items")
    n = len(a)
    if n == 0:
        return None
    xa = np.asarray(a, dtype=bool)
    xb = np.asarray(b, dtype=bool)
    po = float(np.mean(xa == xb))
    pa, pb = float(xa.mean()), float(xb.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1.0:
        return 1.0
    return (po - pe) / (1 - pe)


@dataclass(frozen=True)
class BoxMatch:
    matched: int
    boxes_a: int
    boxes_b: int
    iou_sum: float

    @property
    def matched_share(self) -> float | None:
        total = self.boxes_a + self.boxes_b
        return 2 * self.matched / total if total else None

    @property
    def mean_iou(self) -> float | None:
        return self.iou_sum / self.matched if self.matched else None


def match_boxes(a: Sequence[Box], b: Sequence[Box], *, threshold: float = 0.5) -> BoxMatch:
    """One-to-one matching maximising total IoU among same-label pairs with IoU >= threshold."""
    if not a or not b:
        return BoxMatch(0, len(a), len(b), 0.0)
    m = np.zeros((len(a), len(b)))
    for i, ba in enumerate(a):
        for j, bb in enumerate(b):
            if ba.label == bb.label:
                v = iou(ba, bb)
                m[i, j] = v if v >= threshold else 0.0
    rows, cols = linear_sum_assignment(m, maximize=True)
    pairs = [m[i, j] for i, j in zip(rows, cols, strict=True) if m[i, j] > 0]
    return BoxMatch(len(pairs), len(a), len(b), float(sum(pairs)))


@dataclass(frozen=True)
class Agreement:
    pairs: int
    kappa: float | None
    decision_agreement: float | None
    box_matched_share: float | None
    box_mean_iou: float | None


def agreement(pairs: Sequence[tuple[Sequence[Box], Sequence[Box]]]) -> Agreement:
    """Agreement over images annotated by two annotators (each pair: A's boxes, B's boxes)."""
    da = [len(x) > 0 for x, _ in pairs]
    db = [len(y) > 0 for _, y in pairs]
    total = BoxMatch(0, 0, 0, 0.0)
    for x, y in pairs:
        m = match_boxes(x, y)
        total = BoxMatch(
            total.matched + m.matched,
            total.boxes_a + m.boxes_a,
            total.boxes_b + m.boxes_b,
            total.iou_sum + m.iou_sum,
        )
    same = [p == q for p, q in zip(da, db, strict=True)]
    return Agreement(
        pairs=len(pairs),
        kappa=cohen_kappa(da, db),
        decision_agreement=sum(same) / len(same) if same else None,
        box_matched_share=total.matched_share,
        box_mean_iou=total.mean_iou,
    )


def pairs_by_annotator(
    labels: Iterable[tuple[str, str, Sequence[Box]]],
) -> dict[tuple[str, str], list[tuple[Sequence[Box], Sequence[Box]]]]:
    """Overlap images grouped by annotator pair, from ``(image_id, annotator, boxes)`` labels.

    Each image annotated by two or more annotators contributes every pair of them (names sorted,
    boxes in that order); pass each annotator's current label once per image (skips left out).
    """
    by_image: dict[str, dict[str, Sequence[Box]]] = {}
    for image_id, annotator, boxes in labels:
        by_image.setdefault(image_id, {})[annotator] = boxes
    out: dict[tuple[str, str], list[tuple[Sequence[Box], Sequence[Box]]]] = {}
    for image_id in sorted(by_image):
        names = sorted(by_image[image_id])
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                out.setdefault((a, b), []).append((by_image[image_id][a], by_image[image_id][b]))
    return out
