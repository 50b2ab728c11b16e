"""Rendering: determinism, ground-truth boxes, class mix."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from defectloop.factory_sim import CLASSES, SITES, render, stream
from defectloop.factory_sim.dataset import encode_png
from defectloop.factory_sim.render import SimImage, render_scene


@functools.cache
def _pair(site: str, index: int) -> tuple[SimImage, SimImage]:
    """The image, and the same image rendered without its defects."""
    profile = SITES[site]
    return render(profile, index, 7), render_scene(profile, index, 7, with_defects=False)


@pytest.mark.unit
def test_same_inputs_give_byte_identical_png() -> None:
    first = [encode_png(render(SITES["B"], i, 3).pixels) for i in range(5)]
    second = [encode_png(render(SITES["B"], i, 3).pixels) for i in range(5)]
    assert first == second


@pytest.mark.unit
def test_different_seeds_give_different_images() -> None:
    a = render(SITES["A"], 0, 1).pixels
    b = render(SITES["A"], 0, 2).pixels
    assert not np.array_equal(a, b)


@pytest.mark.unit
def test_image_does_not_depend_on_render_order() -> None:
    streamed = list(stream(SITES["C"], 5, start=3, stop=6))
    direct = [render(SITES["C"], i, 5) for i in (5, 3, 4)]
    assert np.array_equal(streamed[0].pixels, direct[1].pixels)
    assert np.array_equal(streamed[2].pixels, direct[0].pixels)
    assert streamed[1].boxes == direct[2].boxes


@pytest.mark.unit
def test_image_is_grayscale_uint8_of_the_profile_size() -> None:
    image = render(SITES["A"].with_size(256, 192), 0, 1)
    assert image.pixels.dtype == np.uint8
    assert image.pixels.shape == (192, 256)


@pytest.mark.unit
@pytest.mark.parametrize("site", sorted(SITES))
def test_boxes_lie_inside_the_image(site: str) -> None:
    for index in range(30):
        image, _ = _pair(site, index)
        height, width = image.pixels.shape
        for box in image.boxes:
            assert min(box.x, box.y) >= 0
            assert min(box.w, box.h) > 0
            assert box.x + box.w <= width
            assert box.y + box.h <= height


@pytest.mark.unit
@pytest.mark.parametrize("site", sorted(SITES))
def test_boxes_are_tight_around_the_rendered_defect_pixels(site: str) -> None:
    for index in range(30):
        image, clean = _pair(site, index)
        changed = image.pixels != clean.pixels
        covered = np.zeros_like(changed)
        for box in image.boxes:
            region = changed[box.y : box.y + box.h, box.x : box.x + box.w]
            # Every edge of the box touches a changed pixel: nothing to trim.
            edges = (region[0], region[-1], region[:, 0], region[:, -1])
            assert all(edge.any() for edge in edges), (index, box)
            covered[box.y : box.y + box.h, box.x : box.x + box.w] = True
        # And no changed pixel lies outside every box.
        assert not (changed & ~covered).any(), index


@pytest.mark.unit
def test_boxes_are_large_enough_for_a_half_resolution_detector() -> None:
    sizes = [min(b.w, b.h) for i in range(40) for b in _pair("A", i)[0].boxes]
    assert min(sizes) >= 16


@pytest.mark.unit
def test_defects_land_on_the_part_not_the_background() -> None:
    # Site A: bright disc on a dark background, so the clean image tells part from background.
    for index in range(30):
        image, clean = _pair("A", index)
        changed = image.pixels != clean.pixels
        assert (clean.pixels[changed] > 100).all(), index


@pytest.mark.unit
def test_every_class_appears_in_a_modest_number_of_images() -> None:
    labels = [b.label for i in range(60) for b in render(SITES["B"], i, 11).boxes]
    counts = {name: labels.count(name) for name in CLASSES}
    assert min(counts.values()) >= 0.15 * len(labels), counts


@pytest.mark.unit
def test_share_of_images_without_defects_is_roughly_as_configured() -> None:
    site = SITES["C"]
    empty = sum(1 for i in range(200) if not render(site, i, 4).boxes)
    assert abs(empty / 200 - site.no_defect_share) < 0.1


@pytest.mark.unit
def test_defective_images_have_one_to_three_defects() -> None:
    counts = {len(render(SITES["A"], i, 9).boxes) for i in range(80)}
    assert counts - {0} == {1, 2, 3}


@pytest.mark.unit
def test_sites_look_different() -> None:
    means = {name: float(render(site, 0, 1).pixels.mean()) for name, site in SITES.items()}
    spread = max(means.values()) - min(means.values())
    assert spread > 20, means
