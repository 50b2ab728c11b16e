"""Site profiles: what one factory's camera sees when nothing has drifted.

Lengths are fractions of the image's shorter side so a profile renders the same scene at any size.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

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


def get_site(name: str) -> SiteProfile:
    """Look a built-in site up by name."""
    try:
        return SITES[name]
    except KeyError:
        raise InvalidInputError(
            f"unknown site {name!r}", hint=f"known sites: {', '.join(sorted(SITES))}"
        ) from None
