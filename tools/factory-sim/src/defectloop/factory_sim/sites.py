"""Site profiles: what one factory's camera sees when nothing has drifted.

Three are written out (A, B, C: the demo's sites, whose bootstrap models are cached by the
simulator version, so they never change without a version bump); any number more are drawn from
a name and a seed (:func:`procedural_site`: ``S01`` ... ``S20`` for twenty factories).

Lengths are fractions of the image's shorter side so a profile renders the same scene at any size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from defectloop.common.errors import InvalidInputError

TextureKind = Literal["brushed", "cast", "matte"]
PartKind = Literal["disc", "plate", "bracket"]


@dataclass(frozen=True)
class Texture:
    """Procedural surface of the part (gray levels are on the 0-255 scale)."""

    kind: TextureKind
    amplitude: float  # std of the texture around the part's mean level
    scale: float  # feature size in pixels at 512 px
    streak_angle_deg: float = 0.0  # brushing direction, used by "brushed"


@dataclass(frozen=True)
class Lighting:
    """Mean part level, a linear gradient and radial vignetting."""

    part_level: float
    background_level: float
    gradient: float  # relative gain change from one edge to the other
    gradient_angle_deg: float
    vignetting: float  # relative gain loss in the corners


@dataclass(frozen=True)
class Pose:
    """Where the part sits in the frame, plus per-image jitter (camera/fixture play)."""

    dx: float = 0.0  # fraction of the shorter side
    dy: float = 0.0
    rotation_deg: float = 0.0
    scale: float = 1.0
    jitter_shift: float = 0.01
    jitter_rotation_deg: float = 2.0
    jitter_scale: float = 0.02


@dataclass(frozen=True)
class DefectStyle:
    """How defects look at this site; the drift knob ``new-defect`` departs from it."""

    scratch_polarity: int = -1  # -1 darker than the surface, +1 brighter
    crack_polarity: int = -1
    spot_bright_share: float = 0.3
    contrast: float = 1.0  # multiplies the per-class contrast ranges
    class_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # scratch, spot, crack


@dataclass(frozen=True)
class SiteProfile:
    """Everything that makes one site's images look like that site's."""

    name: str
    rng_key: int  # mixed into every per-image random stream
    part: PartKind
    texture: Texture
    lighting: Lighting
    pose: Pose
    noise_sigma: float
    defects: DefectStyle = DefectStyle()
    width: int = 512
    height: int = 512
    no_defect_share: float = 0.4
    max_defects: int = 3

    def with_size(self, width: int, height: int | None = None) -> SiteProfile:
        """The same site at another image size."""
        height = width if height is None else height
        if not (64 <= width <= 4096 and 64 <= height <= 4096):
            raise InvalidInputError(
                f"image size {width}x{height} is out of range",
                hint="use a size between 64 and 4096 pixels",
            )
        return dataclasses.replace(self, width=width, height=height)


SITES: dict[str, SiteProfile] = {
    # Brushed aluminium disc, bright and evenly lit, camera square on.
    "A": SiteProfile(
        name="A",
        rng_key=1,
        part="disc",
        texture=Texture(kind="brushed", amplitude=9.0, scale=40.0, streak_angle_deg=0.0),
        lighting=Lighting(
            part_level=165.0,
            background_level=45.0,
            gradient=0.08,
            gradient_angle_deg=30.0,
            vignetting=0.10,
        ),
        pose=Pose(),
        noise_sigma=2.5,
    ),
    # Cast iron plate with bolt holes, mid-gray, rough, lit from one side, slightly rotated.
    "B": SiteProfile(
        name="B",
        rng_key=2,
        part="plate",
        texture=Texture(kind="cast", amplitude=11.0, scale=10.0),
        lighting=Lighting(
            part_level=120.0,
            background_level=200.0,
            gradient=0.35,
            gradient_angle_deg=-20.0,
            vignetting=0.15,
        ),
        pose=Pose(dx=0.03, dy=-0.02, rotation_deg=12.0, scale=0.95),
        noise_sigma=4.0,
        defects=DefectStyle(scratch_polarity=+1, spot_bright_share=0.5),
    ),
    # Dark matte plastic bracket, dim and vignetted, noisy sensor, camera further away.
    "C": SiteProfile(
        name="C",
        rng_key=3,
        part="bracket",
        texture=Texture(kind="matte", amplitude=4.0, scale=6.0),
        lighting=Lighting(
            part_level=80.0,
            background_level=130.0,
            gradient=0.15,
            gradient_angle_deg=100.0,
            vignetting=0.35,
        ),
        pose=Pose(dx=-0.04, dy=0.03, rotation_deg=-25.0, scale=0.9, jitter_rotation_deg=6.0),
        noise_sigma=6.0,
        defects=DefectStyle(spot_bright_share=0.7, contrast=1.15),
    ),
}


#: Names of procedural sites: ``S`` and a number (``S07``, ``S100``); see :func:`procedural_site`.
PROCEDURAL_NAME = re.compile(r"S[0-9]{1,4}")


def site_names(count: int) -> list[str]:
    """``S01`` ... ``S<count>``: the names of ``count`` procedural factories."""
    if not 1 <= count <= 9999:
        raise InvalidInputError(f"site count {count} is out of range", hint="use 1 to 9999")
    width = max(2, len(str(count)))
    return [f"S{i:0{width}d}" for i in range(1, count + 1)]


def _draws(name: str, seed: int) -> tuple[np.random.Generator, int]:
    """The profile's random stream and its ``rng_key``, from (name, seed) alone.

    sha256, not ``hash()``: str hashes are salted per process, and every gateway, trainer and
    test must derive the same site from the same name.
    """
    digest = hashlib.sha256(f"defectloop.site|{name}|{seed}".encode()).digest()
    # Keys of built-in sites are 1-3; procedural keys start above 2**32, so no stream is shared.
    rng_key = (1 << 32) + int.from_bytes(digest[:6], "big")
    return np.random.default_rng(int.from_bytes(digest[6:22], "big")), rng_key


def procedural_site(name: str, *, seed: int = 0) -> SiteProfile:
    """A factory drawn from ``(name, seed)``: part, texture, lighting, pose, noise, defect mix.

    The same (name, seed) gives the same profile in every process and on every machine (the
    draws come from a sha256 of both); another name or seed, another factory. The ranges span
    what sites A, B and C show, and a little beyond: the part stands out from the background
    (at least 40 gray levels apart) and defects keep the contrast ranges of the built-in sites,
    so a model can learn each one.
    """
    if seed < 0:
        raise InvalidInputError(f"profile seed {seed} is negative", hint="use a seed >= 0")
    rng, rng_key = _draws(name, seed)

    def u(low: float, high: float) -> float:
        return round(float(rng.uniform(low, high)), 3)

    kinds: tuple[TextureKind, ...] = ("brushed", "cast", "matte")
    parts: tuple[PartKind, ...] = ("disc", "plate", "bracket")
    kind = kinds[int(rng.integers(len(kinds)))]
    scale_range = {"brushed": (20.0, 60.0), "cast": (6.0, 16.0), "matte": (4.0, 10.0)}[kind]
    texture = Texture(
        kind=kind,
        amplitude=u(3.0, 12.0),
        scale=u(*scale_range),
        streak_angle_deg=u(-90.0, 90.0) if kind == "brushed" else 0.0,
    )
    part_level = u(75.0, 185.0)
    background_level = part_level
    while abs(background_level - part_level) < 40.0:  # a silhouette the camera can see
        background_level = u(30.0, 220.0)
    lighting = Lighting(
        part_level=part_level,
        background_level=background_level,
        gradient=u(0.03, 0.35),
        gradient_angle_deg=u(-180.0, 180.0),
        vignetting=u(0.05, 0.35),
    )
    pose = Pose(
        dx=u(-0.05, 0.05),
        dy=u(-0.05, 0.05),
        rotation_deg=u(-30.0, 30.0),
        scale=u(0.85, 1.0),
        jitter_shift=u(0.005, 0.02),
        jitter_rotation_deg=u(1.0, 6.0),
        jitter_scale=u(0.01, 0.03),
    )
    polarity = (-1, 1)
    defects = DefectStyle(
        scratch_polarity=polarity[int(rng.integers(2))],
        crack_polarity=polarity[int(rng.integers(2))],
        spot_bright_share=u(0.2, 0.8),
        contrast=u(0.95, 1.2),
        class_weights=(u(0.6, 1.4), u(0.6, 1.4), u(0.6, 1.4)),
    )
    return SiteProfile(
        name=name,
        rng_key=rng_key,
        part=parts[int(rng.integers(len(parts)))],
        texture=texture,
        lighting=lighting,
        pose=pose,
        noise_sigma=u(2.0, 6.5),
        defects=defects,
        no_defect_share=u(0.3, 0.5),
    )


def get_site(name: str, *, profile_seed: int = 0) -> SiteProfile:
    """A built-in site (A, B, C) by name, or a procedural one (``S07``...) from its name and
    ``profile_seed`` (which built-in sites ignore)."""
    if name in SITES:
        return SITES[name]
    if PROCEDURAL_NAME.fullmatch(name):
        return procedural_site(name, seed=profile_seed)
    raise InvalidInputError(
        f"unknown site {name!r}",
        hint=f"built-in sites: {', '.join(sorted(SITES))}; procedural: S01, S02, ... (S + number)",
    )
