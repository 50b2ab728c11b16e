"""Procedural noise fields: surface textures, background and sensor noise.

Generating noise per image is the slowest part of rendering, so each field is made once per
(kind, size) as a tile twice the image size; images then sample it at a per-image offset and pose.
The tiles come from fixed seeds, so they are identical in every process.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.factory_sim.sites import Texture

FloatImage = npt.NDArray[np.float32]

_TILE_SEED = 20240601


def _unit(field: npt.NDArray[np.floating]) -> FloatImage:
    field = field - field.mean()
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32)


def value_noise(rng: np.random.Generator, size: int, cell: float) -> FloatImage:
    """Smooth random field with features about ``cell`` pixels wide (unit std)."""
    n = max(2, round(size / max(cell, 1.0)) + 2)
    grid = rng.standard_normal((n, n)).astype(np.float32)
    return _unit(
        np.asarray(cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC), np.float32)
    )


def _brushed(rng: np.random.Generator, size: int, tex: Texture) -> FloatImage:
    # Brushing leaves long thin streaks: white noise smeared along one direction.
    pad = size // 2
    white = rng.standard_normal((size + 2 * pad, size + 2 * pad)).astype(np.float32)
    length = max(3, int(tex.scale * 2) | 1)
    streaks = cv2.blur(white, (length, 1))
    streaks = cv2.GaussianBlur(streaks, (0, 0), sigmaX=0.1, sigmaY=0.6)
    if tex.streak_angle_deg:
        center = (streaks.shape[1] / 2, streaks.shape[0] / 2)
        rot = cv2.getRotationMatrix2D(center, tex.streak_angle_deg, 1.0)
        streaks = cv2.warpAffine(streaks, rot, streaks.shape[::-1], borderMode=cv2.BORDER_REFLECT)
    cropped = np.asarray(streaks[pad : pad + size, pad : pad + size], np.float32)
    return _unit(_unit(cropped) + 0.5 * value_noise(rng, size, tex.scale * 4))


def _cast(rng: np.random.Generator, size: int, tex: Texture) -> FloatImage:
    # Sand casting: rough multi-scale grain plus scattered small pits.
    field = sum(
        (0.6**octave) * value_noise(rng, size, tex.scale * 2**octave) for octave in range(4)
    )
    # Pits are kept small and shallow so they never pass for "spot" defects.
    pits = (rng.random((size, size)) > 0.999).astype(np.float32)
    pits = np.asarray(cv2.GaussianBlur(pits, (0, 0), 0.8), np.float32)
    return _unit(_unit(np.asarray(field)) - 2.0 * pits / pits.max())


def _matte(rng: np.random.Generator, size: int, tex: Texture) -> FloatImage:
    fine = cv2.GaussianBlur(rng.standard_normal((size, size)).astype(np.float32), (0, 0), 1.0)
    return _unit(_unit(np.asarray(fine, np.float32)) + 0.7 * value_noise(rng, size, tex.scale * 10))


_MAKERS = {"brushed": _brushed, "cast": _cast, "matte": _matte}


# Room for a fleet: one tile per site texture, and a gateway for 20 procedural sites renders them
# in turn (16 slots made every render a miss: ~85 ms instead of ~10). 4 MB a tile at 512 px.
@functools.lru_cache(maxsize=64)
def surface_tile(tex: Texture, size: int) -> FloatImage:
    """Unit-std texture tile of ``size`` x ``size`` for a site's part surface."""
    # str hashes are salted per process, so key the stream by the kind's position instead.
    rng = np.random.default_rng([_TILE_SEED, 1, size, list(_MAKERS).index(tex.kind)])
    tile = _MAKERS[tex.kind](rng, size, tex)
    tile.setflags(write=False)
    return tile


@functools.lru_cache(maxsize=8)
def background_tile(size: int) -> FloatImage:
    """Unit-std, low-frequency field for the conveyor/fixture behind the part."""
    rng = np.random.default_rng([_TILE_SEED, 2, size])
    tile = value_noise(rng, size, 48.0) + 0.3 * value_noise(rng, size, 6.0)
    tile = _unit(tile)
    tile.setflags(write=False)
    return tile


@functools.lru_cache(maxsize=8)
def noise_tile(height: int, width: int) -> FloatImage:
    """Unit-variance white noise, sampled at per-image offsets as sensor noise."""
    rng = np.random.default_rng([_TILE_SEED, 3, height, width])
    tile = rng.standard_normal((height, width), dtype=np.float32)
    tile.setflags(write=False)
    return tile
