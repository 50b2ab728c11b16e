"""Drift knobs change images in the expected direction, from their start index on."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from defectloop.common.errors import InvalidInputError
from defectloop.factory_sim import DRIFT_KINDS, SITES, Drift, parse_drift, render
from defectloop.factory_sim.render import render_scene

SITE = SITES["A"]
INDICES = range(6)


def _images(drift: Drift | None) -> list[npt.NDArray[np.uint8]]:
    drifts = [drift] if drift else []
    return [render(SITE, i, 2, drifts).pixels for i in INDICES]


def _laplacian_var(img: npt.NDArray[np.uint8]) -> float:
    return float(cv2.Laplacian(img.astype(np.float32), cv2.CV_32F).var())


def _high_pass_std(img: npt.NDArray[np.uint8]) -> float:
    f = img.astype(np.float32)
    return float((f - cv2.GaussianBlur(f, (0, 0), 2.0)).std())


@pytest.mark.unit
def test_blur_lowers_laplacian_variance() -> None:
    for base, drifted in zip(_images(None), _images(Drift("blur")), strict=True):
        assert _laplacian_var(drifted) < 0.7 * _laplacian_var(base)


@pytest.mark.unit
def test_lighting_drift_darkens_the_image() -> None:
    for base, drifted in zip(_images(None), _images(Drift("lighting")), strict=True):
        assert drifted.mean() < base.mean() - 15


@pytest.mark.unit
def test_noise_drift_raises_high_frequency_energy() -> None:
    for base, drifted in zip(_images(None), _images(Drift("noise")), strict=True):
        assert _high_pass_std(drifted) > 1.5 * _high_pass_std(base)


@pytest.mark.unit
def test_camera_shift_moves_the_part() -> None:
    def centroid(img: npt.NDArray[np.uint8]) -> npt.NDArray[np.float64]:
        ys, xs = np.nonzero(img > 100)  # the bright disc of site A
        return np.array([xs.mean(), ys.mean()])

    for base, drifted in zip(_images(None), _images(Drift("camera-shift")), strict=True):
        assert np.linalg.norm(centroid(drifted) - centroid(base)) > 0.03 * SITE.width


@pytest.mark.unit
def test_obstruction_covers_a_large_uniform_region() -> None:
    for base, drifted in zip(_images(None), _images(Drift("obstruction")), strict=True):
        covered = np.abs(drifted.astype(int) - base.astype(int)) > 20
        assert covered.mean() > 0.08
        # Inside the obstruction only sensor noise is left.
        assert drifted[covered].std() < 0.5 * base[covered].std()


@pytest.mark.unit
def test_obstruction_stays_in_place_over_time() -> None:
    drift = Drift("obstruction", start_index=0)
    first, second = (
        np.abs(render(SITE, i, 2, [drift]).pixels.astype(int) - render(SITE, i, 2).pixels) > 20
        for i in (10, 11)
    )
    assert (first & second).sum() / (first | second).sum() > 0.9


@pytest.mark.unit
def test_new_defect_flips_the_contrast_of_scratches_and_cracks() -> None:
    def signed_contrast(drifts: list[Drift]) -> float:
        total = 0.0
        for i in range(12):
            image = render_scene(SITE, i, 2, drifts)
            clean = render_scene(SITE, i, 2, drifts, with_defects=False)
            diff = image.pixels.astype(float) - clean.pixels.astype(float)
            for box in image.boxes:
                if box.label != "spot":
                    total += diff[box.y : box.y + box.h, box.x : box.x + box.w].sum()
        return total

    assert signed_contrast([]) < 0  # site A: dark scratches and cracks
    assert signed_contrast([Drift("new-defect")]) > 0


@pytest.mark.unit
def test_new_part_changes_the_part_geometry() -> None:
    image = render(SITE, 0, 2, [Drift("new-part")])
    assert image.meta["part"] != SITE.part


@pytest.mark.unit
@pytest.mark.parametrize("kind", DRIFT_KINDS)
def test_drift_has_no_effect_before_its_start_index(kind: str) -> None:
    drift = Drift(kind, start_index=5, severity=1.0)
    assert np.array_equal(render(SITE, 4, 2, [drift]).pixels, render(SITE, 4, 2).pixels)
    assert not np.array_equal(render(SITE, 5, 2, [drift]).pixels, render(SITE, 5, 2).pixels)


@pytest.mark.unit
def test_parse_drift_fills_defaults() -> None:
    assert parse_drift("blur") == Drift("blur", 0, 0.5)
    assert parse_drift("noise:100") == Drift("noise", 100, 0.5)
    assert parse_drift("lighting:20:0.9") == Drift("lighting", 20, 0.9)


@pytest.mark.unit
@pytest.mark.parametrize("spec", ["fog", "blur:x", "blur:1:2.0", "blur:-1", "a:b:c:d", ""])
def test_parse_drift_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_drift(spec)
