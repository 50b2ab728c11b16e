"""Part silhouettes: polygons in part units (1 = the image's shorter side), centred on 0."""

from __future__ import annotations

import math

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.factory_sim.sites import PartKind

PART_KINDS: tuple[PartKind, ...] = ("disc", "plate", "bracket")

Polygon = npt.NDArray[np.float64]


def _circle(cx: float, cy: float, r: float, n: int = 96) -> Polygon:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1)


def _outline(kind: PartKind) -> tuple[list[Polygon], list[Polygon]]:
    """(solid polygons, hole polygons) of a part."""
    if kind == "disc":
        holes = [_circle(0, 0, 0.07)]
        holes += [_circle(0.25 * math.cos(a), 0.25 * math.sin(a), 0.025) for a in (0.5, 2.6, 4.7)]
        return [_circle(0, 0, 0.38)], holes
    if kind == "plate":
        plate = np.array([[-0.38, -0.27], [0.38, -0.27], [0.38, 0.27], [-0.38, 0.27]])
        holes = [_circle(x, y, 0.035) for x in (-0.3, 0.3) for y in (-0.19, 0.19)]
        return [plate], holes
    bracket = np.array(
        [[-0.36, -0.38], [-0.08, -0.38], [-0.08, 0.1], [0.38, 0.1], [0.38, 0.38], [-0.36, 0.38]]
    )
    return [bracket], [_circle(-0.22, -0.22, 0.04), _circle(0.24, 0.24, 0.04)]


def next_part(kind: PartKind) -> PartKind:
    """The part the line switches to under the ``new-part`` drift."""
    return PART_KINDS[(PART_KINDS.index(kind) + 1) % len(PART_KINDS)]


def draw_part(
    kind: PartKind, to_image: npt.NDArray[np.float64], shape: tuple[int, int]
) -> npt.NDArray[np.uint8]:
    """Anti-aliased part coverage (0-255) under the 2x3 affine ``to_image`` (part units -> px)."""
    solids, holes = _outline(kind)
    mask = np.zeros(shape, np.uint8)

    def fixed(poly: Polygon) -> npt.NDArray[np.int32]:
        pts = poly @ to_image[:, :2].T + to_image[:, 2]
        return np.round(pts * 16).astype(np.int32)

    cv2.fillPoly(mask, [fixed(p) for p in solids], 255, cv2.LINE_AA, 4)
    cv2.fillPoly(mask, [fixed(p) for p in holes], 0, cv2.LINE_AA, 4)
    return mask
