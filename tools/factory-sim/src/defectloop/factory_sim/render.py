"""Render one image of a site: part, texture, defects, lighting, optics, sensor.

Image ``index`` of (site, seed, drifts) is a pure function of those: every random draw comes from
a stream seeded with ``[seed, site.rng_key, index, component]``, so images can be rendered in any
order, in any process, and each component (pose, defects, noise...) keeps its draws when another
component changes (a drift on the lighting leaves the defects where they were).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.factory_sim.defects import Box, Defect, place_defects
from defectloop.factory_sim.drift import Drift, active_drifts
from defectloop.factory_sim.parts import draw_part, next_part
from defectloop.factory_sim.sites import SiteProfile
from defectloop.factory_sim.textures import background_tile, noise_tile, surface_tile

# Component ids of the per-image random streams.
_POSE, _SURFACE, _DEFECTS, _NOISE, _LIGHT = range(5)
_OBSTRUCTION = 99


@dataclass
class SimImage:
    """A rendered image: ``pixels`` is HxW uint8 grayscale, ``boxes`` its ground truth."""

    pixels: npt.NDArray[np.uint8]
    boxes: list[Box]
    meta: dict[str, Any] = field(default_factory=dict)


def _rng(seed: int, site: SiteProfile, index: int, component: int) -> np.random.Generator:
    return np.random.default_rng([seed, site.rng_key, index, component])


@functools.lru_cache(maxsize=8)
def _grids(height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Normalised x, y in [-0.5, 0.5] and squared radius (1 in the corners)."""
    x = (np.arange(width, dtype=np.float32) / (width - 1) - 0.5)[None, :]
    y = (np.arange(height, dtype=np.float32) / (height - 1) - 0.5)[:, None]
    r2 = (x**2 + y**2) / 0.5
    return x, y, r2.astype(np.float32)


def _pose(
    site: SiteProfile, rng: np.random.Generator, shift: Drift | None
) -> tuple[np.ndarray, dict[str, float]]:
    """2x3 affine from part units to pixels, and the pose it encodes."""
    p = site.pose
    side = min(site.width, site.height)
    dx = p.dx + rng.normal(0, p.jitter_shift)
    dy = p.dy + rng.normal(0, p.jitter_shift)
    rot = p.rotation_deg + rng.normal(0, p.jitter_rotation_deg)
    scale = p.scale * (1 + rng.normal(0, p.jitter_scale))
    if shift is not None:
        dx += 0.12 * shift.severity
        dy -= 0.08 * shift.severity
        rot += 15.0 * shift.severity
        scale *= 1 + 0.15 * shift.severity
    a = math.radians(rot)
    s = scale * side
    m = np.array(
        [
            [s * math.cos(a), -s * math.sin(a), site.width / 2 + dx * side],
            [s * math.sin(a), s * math.cos(a), site.height / 2 + dy * side],
        ]
    )
    return m, {"dx": dx, "dy": dy, "rotation_deg": rot, "scale": scale}


def _surface(
    site: SiteProfile, rng: np.random.Generator, to_image: np.ndarray
) -> npt.NDArray[np.float32]:
    """The part's textured surface over the whole frame, moving with the part."""
    tile = surface_tile(site.texture, 2 * max(site.width, site.height))
    t = tile.shape[0]
    off = rng.uniform(-t / 4, t / 4, size=2) + t / 2
    # Tile pixel q maps to image c + R s (q - off) / side: rotation and zoom follow the part's pose.
    lin = to_image[:, :2] / min(site.width, site.height)
    m = np.hstack([lin, (to_image[:, 2] - lin @ off)[:, None]])
    warped = cv2.warpAffine(
        tile, m, (site.width, site.height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
    )
    level = site.lighting.part_level * (1 + rng.normal(0, 0.03))
    return warped * np.float32(site.texture.amplitude) + np.float32(level)


def _background(site: SiteProfile, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    tile = background_tile(2 * max(site.width, site.height))
    y = int(rng.integers(0, tile.shape[0] - site.height))
    x = int(rng.integers(0, tile.shape[1] - site.width))
    crop = tile[y : y + site.height, x : x + site.width]
    return crop * np.float32(4.0) + np.float32(site.lighting.background_level)


def _gain(
    site: SiteProfile, rng: np.random.Generator, drift: Drift | None
) -> npt.NDArray[np.float32]:
    """Multiplicative illumination: mean level, linear gradient, vignetting."""
    light = site.lighting
    mean, gradient = 1.0, light.gradient
    angle = math.radians(light.gradient_angle_deg + rng.normal(0, 5))
    if drift is not None:
        mean *= 1 - 0.55 * drift.severity
        gradient += 0.5 * drift.severity
    x, y, r2 = _grids(site.height, site.width)
    g = np.float32(gradient)
    ramp = (g * math.cos(angle)) * x + (g * math.sin(angle)) * y
    gain = np.float32(mean) * (1 + ramp - np.float32(light.vignetting) * r2)
    return gain.astype(np.float32, copy=False)


def _obstruction(
    site: SiteProfile, seed: int, drift: Drift
) -> tuple[npt.NDArray[np.float32], float]:
    """Coverage (0-1) of an object in front of the lens, and its gray level.

    It is seeded by the drift's start, not the image, so it stays put like a real obstruction.
    """
    rng = np.random.default_rng([seed, site.rng_key, drift.start_index, _OBSTRUCTION])
    h, w = site.height, site.width
    side = min(h, w)
    edge = int(rng.integers(0, 4))
    along = rng.uniform(0.2, 0.8)
    centers = [(along * w, 0.0), (w, along * h), (along * w, float(h)), (0.0, along * h)]
    cx, cy = centers[edge]
    # Area of half an ellipse entering from an edge ~ covered share of the frame.
    share = 0.08 + 0.27 * drift.severity
    r = math.sqrt(2 * share * h * w / math.pi)
    axes = (r * rng.uniform(0.8, 1.25), r * rng.uniform(0.8, 1.25))
    mask = np.zeros((h, w), np.uint8)
    cv2.ellipse(
        mask,
        (int(cx * 16), int(cy * 16)),
        (int(axes[0] * 16), int(axes[1] * 16)),
        rng.uniform(0, 180),
        0,
        360,
        255,
        -1,
        cv2.LINE_AA,
        4,
    )
    # Out of focus, so its edge is soft.
    cover = np.asarray(
        cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.01 * side + 1), np.float32
    )
    return cover, float(rng.uniform(5, 20))


def _occlude(defects: list[Defect], cover: npt.NDArray[np.float32]) -> list[Defect]:
    """Keep what stays visible of each defect; drop those mostly hidden."""
    kept = []
    for d in defects:
        h, w = d.alpha.shape
        hidden = cover[d.y0 : d.y0 + h, d.x0 : d.x0 + w] >= 0.5
        visible = np.where(hidden, np.float32(0), d.alpha)
        if (visible > 0).sum() >= 0.5 * (d.alpha > 0).sum():
            kept.append(Defect(d.label, d.x0, d.y0, visible, d.delta))
    return kept


def render_scene(
    site: SiteProfile,
    index: int,
    seed: int,
    drifts: Iterable[Drift] = (),
    *,
    with_defects: bool = True,
) -> SimImage:
    """``render``, with the option of leaving the defects out (same image otherwise)."""
    if index < 0 or seed < 0:
        raise ValueError("index and seed must be >= 0")
    active = active_drifts(drifts, index)
    h, w = site.height, site.width
    side = min(h, w)

    to_image, pose = _pose(site, _rng(seed, site, index, _POSE), active.get("camera-shift"))
    part_kind = next_part(site.part) if "new-part" in active else site.part
    coverage = draw_part(part_kind, to_image, (h, w))

    srng = _rng(seed, site, index, _SURFACE)
    surface = _surface(site, srng, to_image)
    background = _background(site, srng)

    defects: list[Defect] = []
    drng = _rng(seed, site, index, _DEFECTS)
    count = (
        0 if drng.random() < site.no_defect_share else int(drng.integers(1, site.max_defects + 1))
    )
    if count and with_defects:
        # Keep defects a few pixels inside the silhouette, clear of its anti-aliased edge.
        solid = cv2.erode((coverage == 255).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        novelty = active["new-defect"].severity if "new-defect" in active else 0.0
        min_box = max(8, round(16 * side / 512))
        defects = place_defects(drng, count, solid, site.defects, min_box, novelty)
        for d in defects:
            dh, dw = d.alpha.shape
            surface[d.y0 : d.y0 + dh, d.x0 : d.x0 + dw] += np.float32(d.delta) * d.alpha

    alpha = coverage.astype(np.float32) * np.float32(1 / 255)
    img = background + alpha * (surface - background)
    img *= _gain(site, _rng(seed, site, index, _LIGHT), active.get("lighting"))

    if "obstruction" in active:
        cover, level = _obstruction(site, seed, active["obstruction"])
        img += cover * (np.float32(level) - img)
        defects = _occlude(defects, cover)
    if "blur" in active:
        sigma_blur = (0.5 + 3.5 * active["blur"].severity) * side / 512
        img = np.asarray(cv2.GaussianBlur(img, (0, 0), sigma_blur), np.float32)

    nrng = _rng(seed, site, index, _NOISE)
    sigma = site.noise_sigma + (14.0 * active["noise"].severity if "noise" in active else 0.0)
    bank = noise_tile(2 * h, 2 * w)
    ny, nx = int(nrng.integers(0, h)), int(nrng.integers(0, w))
    img += np.float32(sigma) * bank[ny : ny + h, nx : nx + w]

    pixels = np.empty((h, w), np.uint8)
    np.clip(img, 0, 255, out=img)
    np.rint(img, out=img)
    pixels[...] = img
    boxes = [b for b in (d.box() for d in defects) if b is not None]
    meta = {
        "site": site.name,
        "seed": seed,
        "index": index,
        "part": part_kind,
        "pose": pose,
        "drifts": {k: d.severity for k, d in sorted(active.items())},
    }
    return SimImage(pixels, boxes, meta)


def render(site: SiteProfile, index: int, seed: int, drifts: Iterable[Drift] = ()) -> SimImage:
    """Image ``index`` of ``site`` for ``seed`` with ``drifts`` applied (deterministic)."""
    return render_scene(site, index, seed, drifts)


def stream(
    site: SiteProfile,
    seed: int,
    drifts: Iterable[Drift] = (),
    start: int = 0,
    stop: int | None = None,
) -> Iterator[SimImage]:
    """Images ``start, start + 1, ...`` up to ``stop`` (or forever), as a camera sends them."""
    drifts = tuple(drifts)
    index = start
    while stop is None or index < stop:
        yield render(site, index, seed, drifts)
        index += 1
