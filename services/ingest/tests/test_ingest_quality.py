"""Quality metrics on synthetic frames (pure functions)."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from defectloop.common.events import RejectReason
from defectloop.ingest import quality
from defectloop.ingest.settings import QualityFloor

pytestmark = pytest.mark.unit


def test_blurred_frame_has_lower_sharpness(pngs) -> None:
    frame = pngs.frame(1, 240, 320)
    blurred = cv2.GaussianBlur(frame, (0, 0), 3)
    assert quality.sharpness(blurred) < quality.sharpness(frame) / 5


def test_uniform_frame_is_flagged_and_fully_obstructed() -> None:
    metrics = quality.measure(np.full((120, 160), 90, np.uint8))
    assert metrics.uniform
    assert metrics.obstructed_fraction == 1.0


def test_textured_frame_is_not_uniform(pngs) -> None:
    metrics = quality.measure(pngs.frame(2))
    assert not metrics.uniform
    assert metrics.obstructed_fraction == 0.0


def test_half_covered_frame_is_half_obstructed(pngs) -> None:
    frame = pngs.frame(3, 128, 128)
    frame[:, :64] = 0
    assert quality.obstructed_fraction(frame, flat_tile_max_std=2.0) == pytest.approx(0.5)


def test_brightness_and_contrast_are_mean_and_std() -> None:
    frame = np.array([[0, 100], [100, 200]], np.uint8)
    metrics = quality.measure(frame)
    assert metrics.brightness == pytest.approx(100.0)
    assert metrics.contrast == pytest.approx(float(frame.std()))


def test_noisy_copy_is_a_near_duplicate_and_another_frame_is_not(pngs) -> None:
    frame = pngs.frame(4, 240, 320)
    rng = np.random.default_rng(0)
    noisy = np.clip(frame + rng.normal(0, 3, frame.shape), 0, 255).astype(np.uint8)
    same = quality.fingerprint_distance(quality.fingerprint(frame), quality.fingerprint(noisy))
    other = quality.fingerprint_distance(
        quality.fingerprint(frame), quality.fingerprint(np.flipud(frame).copy())
    )
    assert same < 1.0 < other


def test_default_floor_rejects_only_uniform_frames() -> None:
    floor = QualityFloor()
    dark_blurry = quality.measure(
        cv2.GaussianBlur(np.tile(np.arange(64, dtype=np.uint8), (64, 1)) // 8, (0, 0), 5)
    )
    assert quality.floor_violation(dark_blurry, floor) is None
    uniform = quality.measure(np.zeros((32, 32), np.uint8))
    assert quality.floor_violation(uniform, floor)[0] is RejectReason.UNIFORM_FRAME  # type: ignore[index]


@pytest.mark.parametrize(
    ("floor", "reason"),
    [
        (QualityFloor(min_brightness=150), RejectReason.TOO_DARK),
        (QualityFloor(max_brightness=50), RejectReason.TOO_BRIGHT),
        (QualityFloor(min_sharpness=1e9), RejectReason.TOO_BLURRY),
    ],
)
def test_site_floor_rejects_with_its_reason(
    pngs, floor: QualityFloor, reason: RejectReason
) -> None:
    violation = quality.floor_violation(quality.measure(pngs.frame(5)), floor)
    assert violation is not None
    assert violation[0] is reason


def test_color_and_16_bit_frames_reduce_to_gray8(pngs) -> None:
    frame = pngs.frame(6)
    assert quality.to_gray8(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)).shape == frame.shape
    assert quality.to_gray8(frame.astype(np.uint16) << 8).dtype == np.uint8


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    frame=st.tuples(st.integers(1, 60), st.integers(1, 60)).flatmap(
        lambda side: hnp.arrays(np.uint8, side)
    )
)
def test_metrics_equal_their_float64_definitions(frame: np.ndarray) -> None:
    """The no-float-copy computation (int16 Laplacian, OpenCV mean/std) gives the textbook values:
    the variance of the float64 Laplacian, numpy's mean and std, per-tile numpy std."""
    metrics = quality.measure(frame, flat_tile_max_std=2.0)
    reference = float(cv2.Laplacian(frame, cv2.CV_64F).var())
    assert metrics.sharpness == pytest.approx(reference, rel=1e-9, abs=1e-9)
    assert metrics.brightness == pytest.approx(float(frame.mean()), rel=1e-12, abs=1e-9)
    # sqrt(E[x^2] - mean^2): a rounding of 1e-16 under the root is 1e-8 above it (flat frames).
    assert metrics.contrast == pytest.approx(float(frame.std()), rel=1e-9, abs=1e-6)
    ys = np.linspace(0, frame.shape[0], 9, dtype=int)
    xs = np.linspace(0, frame.shape[1], 9, dtype=int)
    tiles = [
        frame[y0:y1, x0:x1]
        for y0, y1 in itertools.pairwise(ys)
        for x0, x1 in itertools.pairwise(xs)
        if (y1 - y0) * (x1 - x0)
    ]
    flat = sum(float(tile.std()) < 2.0 for tile in tiles)
    assert metrics.obstructed_fraction == pytest.approx(flat / len(tiles))
