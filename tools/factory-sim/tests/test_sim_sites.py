"""Procedural site profiles (issue 14 §4): twenty factories, or any number, drawn from a name and a
seed; the built-in sites A, B and C stay exactly as they were (their bootstrap models are cached
by the simulator version)."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from defectloop.common.errors import InvalidInputError
from defectloop.factory_sim import (
    SIMULATOR_VERSION,
    SITES,
    get_site,
    parse_drift,
    procedural_site,
    render,
    site_names,
)

pytestmark = pytest.mark.unit

#: Digest of A, B and C renders (pixels and boxes, with and without drift) taken before procedural
#: sites existed: a change here retrains every cached bootstrap model, so it needs a version bump.
ABC_DIGEST = "2abea5c40b4d1768356b321706dc50738fe9e179a9e19983d34194feb4990e74"
#: Image 0 (seed 1) of S07 with profile seed 0: procedural sites are pinned too.
S07_DIGEST = "3881517df542a7f7196e6da6a4216a5cc8b97f5e858e873a7ad729f34f8a009d"


def _digest(pixels: np.ndarray) -> str:
    return hashlib.sha256(pixels.tobytes()).hexdigest()


def test_built_in_sites_render_exactly_as_before() -> None:
    digest = hashlib.sha256()
    for site in "ABC":
        for index in range(3):
            image = render(SITES[site], index, 1)
            digest.update(image.pixels.tobytes())
            digest.update(repr(list(image.boxes)).encode())
        drifts = [parse_drift("lighting:0:0.5"), parse_drift("blur:3")]
        digest.update(render(SITES[site], 5, 2, drifts).pixels.tobytes())
    assert digest.hexdigest() == ABC_DIGEST
    assert SIMULATOR_VERSION == "1"
    assert [get_site(site) for site in "ABC"] == [SITES[site] for site in "ABC"]


def test_a_procedural_site_is_a_pure_function_of_name_and_seed() -> None:
    assert procedural_site("S07") == procedural_site("S07", seed=0) == get_site("S07")
    assert _digest(render(get_site("S07"), 0, 1).pixels) == S07_DIGEST


def test_the_same_site_in_another_process_is_the_same_site() -> None:
    """sha256-derived, not ``hash()``-derived: str hashes are salted per process."""
    code = "from defectloop.factory_sim import get_site; print(repr(get_site('S13')))"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == repr(get_site("S13"))


def test_another_seed_or_name_is_another_factory() -> None:
    base = procedural_site("S07")
    reseeded = get_site("S07", profile_seed=1)
    assert reseeded.name == "S07"
    assert dataclasses.replace(reseeded, rng_key=base.rng_key) != base
    assert reseeded.rng_key != base.rng_key
    assert procedural_site("S08") != dataclasses.replace(base, name="S08")


@pytest.mark.slow  # 240 renders and 20 texture tiles: 5-25 s on 2 shared cores
def test_twenty_sites_are_distinct_and_each_renders_a_visible_part_with_defects() -> None:
    names = site_names(20)
    assert names[0] == "S01"
    assert names[-1] == "S20"
    profiles = [get_site(name) for name in names]
    keys = {p.rng_key for p in profiles}
    assert len(keys) == 20
    assert keys.isdisjoint({s.rng_key for s in SITES.values()})
    looks = {(p.part, p.texture.kind) for p in profiles}
    assert len(looks) >= 6  # the fleet mixes parts and surfaces
    digests = set()
    for profile in profiles:
        level = profile.lighting
        assert abs(level.part_level - level.background_level) >= 40
        images = [render(profile, index, 1) for index in range(12)]
        digests.add(_digest(images[0].pixels))
        assert any(image.boxes for image in images), profile.name
        for image in images:
            assert image.pixels.shape == (512, 512)
            assert float(image.pixels.std()) > 10  # a part on a background, not a flat frame
            for box in image.boxes:
                x, y, w, h = box.x, box.y, box.w, box.h
                assert 0 <= x < x + w <= 512
                assert 0 <= y < y + h <= 512
    assert len(digests) == 20


def test_a_hundred_sites_have_distinct_streams() -> None:
    assert len({get_site(name).rng_key for name in site_names(100)}) == 100
    assert site_names(100)[-1] == "S100"


@pytest.mark.parametrize("name", ["D", "s07", "S", "S07x", "site-7", ""])
def test_unknown_names_are_refused_with_the_naming_rule(name: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        get_site(name)
    assert caught.value.hint is not None
    assert "S01" in caught.value.hint


def test_bad_counts_and_seeds_are_refused() -> None:
    with pytest.raises(InvalidInputError):
        site_names(0)
    with pytest.raises(InvalidInputError):
        procedural_site("S01", seed=-1)


def test_a_fleet_rendered_in_turn_reuses_its_texture_tiles() -> None:
    """A gateway for 20 sites renders them round-robin: one tile per site, built once."""
    from defectloop.factory_sim import textures

    profiles = [get_site(name).with_size(128) for name in site_names(20)]
    textures.surface_tile.cache_clear()
    for index in range(2):
        for profile in profiles:
            render(profile, index, 1)
    info = textures.surface_tile.cache_info()
    assert info.misses == len({p.texture for p in profiles})
    assert info.hits == 2 * len(profiles) - info.misses
