"""Defect shapes and their exact ground-truth boxes.

Each defect is drawn into a small region of interest as an alpha map; the box is the bounding
rectangle of the alpha map's non-zero pixels, so it is tight to what actually lands in the image.
Alpha below a floor is zeroed so that faint anti-aliasing fringes never leak outside the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.factory_sim.sites import DefectStyle

CLASSES: tuple[str, ...] = ("scratch", "spot", "crack")
CATEGORY_IDS: dict[str, int] = {name: i + 1 for i, name in enumerate(CLASSES)}

_ALPHA_FLOOR = 0.25
_SHIFT = 4  # cv2 fixed-point bits: sub-pixel accurate drawing
_MAX_TRIES = 25


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in pixels of the final image (x, y = top-left; w, h >= 1)."""

    x: int
    y: int
    w: int
    h: int
    label: str

    @property
    def category_id(self) -> int:
        """COCO category id of ``label``."""
        return CATEGORY_IDS[self.label]

    def intersects(self, other: Box, gap: int = 0) -> bool:
        """Whether the boxes overlap or come closer than ``gap`` pixels."""
        return not (
            self.x + self.w + gap <= other.x
            or other.x + other.w + gap <= self.x
            or self.y + self.h + gap <= other.y
            or other.y + other.h + gap <= self.y
        )


@dataclass
class Defect:
    """A drawn defect: ``alpha`` covers the region from (x0, y0); ``delta`` is its contrast."""

    label: str
    x0: int
    y0: int
    alpha: npt.NDArray[np.float32]
    delta: float

    def box(self) -> Box | None:
        """Tight box of the non-zero alpha pixels, or None when nothing is left."""
        x, y, w, h = cv2.boundingRect((self.alpha > 0).astype(np.uint8))
        if w == 0 or h == 0:
            return None
        return Box(self.x0 + x, self.y0 + y, w, h, self.label)


def _fixed(points: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    return np.round(points * (1 << _SHIFT)).astype(np.int32)


def _scratch_points(rng: np.random.Generator, cx: float, cy: float, u: float) -> list[np.ndarray]:
    length = rng.uniform(40, 160) * u
    theta = rng.uniform(0, math.pi)
    bend = rng.uniform(-0.25, 0.25) * length
    d = np.array([math.cos(theta), math.sin(theta)])
    n = np.array([-d[1], d[0]])
    p0 = np.array([cx, cy]) - d * length / 2
    p2 = np.array([cx, cy]) + d * length / 2
    p1 = (p0 + p2) / 2 + n * bend
    t = np.linspace(0, 1, 24)[:, None]
    return [(1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2]


def _walk(
    rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float
) -> np.ndarray:
    turns = np.cumsum(rng.normal(0, 0.45, steps)) * 0.6 + heading
    lengths = rng.uniform(0.6, 1.2, steps) * step
    moves = np.stack([np.cos(turns) * lengths, np.sin(turns) * lengths], axis=1)
    return np.vstack([start, start + np.cumsum(moves, axis=0)])


def _crack_points(
    rng: np.random.Generator, cx: float, cy: float, u: float, extra_branches: int
) -> list[np.ndarray]:
    heading = rng.uniform(0, 2 * math.pi)
    steps = int(rng.integers(6, 14))
    main = _walk(rng, np.array([cx, cy]), heading, steps, 10 * u)
    main -= (main[-1] - main[0]) / 2  # centre the crack on (cx, cy)
    paths = [main]
    for _ in range(int(rng.integers(1, 4)) + extra_branches):
        at = main[int(rng.integers(1, len(main) - 1))]
        side = rng.choice([-1.0, 1.0])
        branch_heading = heading + side * rng.uniform(0.5, 1.2)
        paths.append(_walk(rng, at, branch_heading, int(rng.integers(3, 7)), 8 * u))
    return paths


def _draw_paths(
    paths: list[np.ndarray], thickness: int, shape: tuple[int, int], origin: np.ndarray
) -> npt.NDArray[np.float32]:
    mask = np.zeros(shape, np.uint8)
    pts = [_fixed(p - origin) for p in paths]
    cv2.polylines(mask, pts, False, 255, thickness, cv2.LINE_AA, _SHIFT)
    return mask.astype(np.float32) / 255.0


def _spot_alpha(
    rng: np.random.Generator, cx: float, cy: float, u: float, elongation: float
) -> tuple[npt.NDArray[np.float32], int, int]:
    rx = rng.uniform(8, 22) * u
    ry = rx * rng.uniform(0.6, 1.0) * (1.0 - elongation)
    ry = max(ry, 8 * u)
    angle = rng.uniform(0, 180)
    sigma = 0.3 * min(rx, ry)
    margin = math.ceil(max(rx, ry) + 3 * sigma + 2)
    x0, y0 = int(cx) - margin, int(cy) - margin
    size = 2 * margin + 1
    mask = np.zeros((size, size), np.uint8)
    center = _fixed(np.array([cx - x0, cy - y0]))
    axes = _fixed(np.array([rx, ry]))
    cv2.ellipse(mask, tuple(center), tuple(axes), angle, 0, 360, 255, -1, cv2.LINE_AA, _SHIFT)
    alpha = np.asarray(cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), sigma), np.float32)
    # Blurring lowers the peak of small spots; renormalise so contrast means the same for all.
    peak = float(alpha.max())
    return (alpha / peak if peak > 0 else alpha), x0, y0


def _make_one(
    rng: np.random.Generator,
    label: str,
    cx: float,
    cy: float,
    u: float,
    style: DefectStyle,
    novelty: float,
) -> Defect:
    """One defect centred near (cx, cy); ``novelty`` > 0 is the ``new-defect`` drift severity."""
    flip = novelty > 0
    if label == "spot":
        alpha, x0, y0 = _spot_alpha(rng, cx, cy, u, elongation=0.6 * novelty)
        bright = rng.random() < style.spot_bright_share
        polarity = 1 if bright != flip else -1
        contrast = rng.uniform(40, 85)
    else:
        if label == "scratch":
            paths = _scratch_points(rng, cx, cy, u)
            # At least 2 px at 512: a 1 px line all but vanishes when a detector halves the image.
            thickness = int(rng.integers(2, 4)) + round(2 * novelty)
            polarity = style.scratch_polarity
            contrast = rng.uniform(45, 80)
        else:
            paths = _crack_points(rng, cx, cy, u, extra_branches=round(3 * novelty))
            thickness = int(rng.integers(2, 3)) + round(novelty)
            polarity = style.crack_polarity
            contrast = rng.uniform(45, 90)
        polarity = -polarity if flip else polarity
        thickness = max(1, round(thickness * u))
        allp = np.vstack(paths)
        margin = thickness + 2
        x0 = math.floor(allp[:, 0].min()) - margin
        y0 = math.floor(allp[:, 1].min()) - margin
        x1 = math.ceil(allp[:, 0].max()) + margin
        y1 = math.ceil(allp[:, 1].max()) + margin
        alpha = _draw_paths(paths, thickness, (y1 - y0 + 1, x1 - x0 + 1), np.array([x0, y0]))
    alpha[alpha < _ALPHA_FLOOR] = 0.0
    return Defect(label, x0, y0, alpha, polarity * contrast * style.contrast)


def _fits(defect: Defect, part: npt.NDArray[np.bool_]) -> bool:
    """Whether every defect pixel lies inside the frame and on the part."""
    h, w = defect.alpha.shape
    frame_h, frame_w = part.shape
    if defect.x0 < 0 or defect.y0 < 0 or defect.x0 + w > frame_w or defect.y0 + h > frame_h:
        # Only the zero margin may stick out of the frame.
        ys, xs = np.nonzero(defect.alpha)
        xs, ys = xs + defect.x0, ys + defect.y0
        if xs.size == 0 or min(xs.min(), ys.min()) < 0:
            return False
        if xs.max() >= frame_w or ys.max() >= frame_h:
            return False
        return bool(part[ys, xs].all())
    region = part[defect.y0 : defect.y0 + h, defect.x0 : defect.x0 + w]
    return bool(region[defect.alpha > 0].all())


def _crop_to_frame(defect: Defect, height: int, width: int) -> Defect:
    h, w = defect.alpha.shape
    x0, y0 = max(defect.x0, 0), max(defect.y0, 0)
    x1, y1 = min(defect.x0 + w, width), min(defect.y0 + h, height)
    alpha = defect.alpha[y0 - defect.y0 : y1 - defect.y0, x0 - defect.x0 : x1 - defect.x0]
    return Defect(defect.label, x0, y0, np.ascontiguousarray(alpha), defect.delta)


def place_defects(
    rng: np.random.Generator,
    count: int,
    part: npt.NDArray[np.bool_],
    style: DefectStyle,
    min_box: int,
    novelty: float = 0.0,
) -> list[Defect]:
    """Up to ``count`` non-overlapping defects lying wholly on ``part``, each box >= ``min_box``.

    A defect that cannot be placed after a few tries is left out rather than bent to fit.
    """
    height, width = part.shape
    u = min(height, width) / 512.0
    weights = np.asarray(style.class_weights, dtype=np.float64)
    placed: list[Defect] = []
    boxes: list[Box] = []
    for _ in range(count):
        label = CLASSES[int(rng.choice(len(CLASSES), p=weights / weights.sum()))]
        for _try in range(_MAX_TRIES):
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if not part[int(cy), int(cx)]:
                continue
            defect = _make_one(rng, label, cx, cy, u, style, novelty)
            if not _fits(defect, part):
                continue
            defect = _crop_to_frame(defect, height, width)
            box = defect.box()
            if box is None or min(box.w, box.h) < min_box:
                continue
            if any(box.intersects(b, gap=2) for b in boxes):
                continue
            placed.append(defect)
            boxes.append(box)
            break
    return placed
