"""Factory simulator: procedurally generated grayscale part images per site, defects with exact
ground-truth boxes, drift knobs, and COCO dataset writing. Deterministic from a seed.

    from defectloop.factory_sim import SITES, Drift, render, generate_dataset
    image = render(SITES["A"], index=0, seed=1, drifts=[Drift("blur", start_index=0)])
    twenty = [get_site(name) for name in site_names(20)]  # S01..S20, procedural
"""

from __future__ import annotations

from defectloop.factory_sim.dataset import DatasetSummary, encode_png, generate_dataset, is_complete
from defectloop.factory_sim.defects import CATEGORY_IDS, CLASSES, Box
from defectloop.factory_sim.drift import DRIFT_KINDS, Drift, parse_drift
from defectloop.factory_sim.render import SimImage, render, stream
from defectloop.factory_sim.sites import (
    SITES,
    SiteProfile,
    get_site,
    procedural_site,
    site_names,
)
from defectloop.factory_sim.version import SIMULATOR_VERSION

__all__ = [
    "CATEGORY_IDS",
    "CLASSES",
    "DRIFT_KINDS",
    "SIMULATOR_VERSION",
    "SITES",
    "Box",
    "DatasetSummary",
    "Drift",
    "SimImage",
    "SiteProfile",
    "encode_png",
    "generate_dataset",
    "get_site",
    "is_complete",
    "parse_drift",
    "procedural_site",
    "render",
    "site_names",
    "stream",
]
