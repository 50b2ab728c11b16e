"""Bootstrap models: a site with no model gets one trained on simulated data, cached once.

So the local stack predicts out of the box. The cache key covers what decides the weights: the
simulator version, the trainer's config files and the bootstrap recipe below; a change to any of
them trains a new bootstrap model.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from defectloop.cli.errors import require_trainer
from defectloop.common.paths import cache_home

BOOTSTRAP_IMAGES = 500  # the recipe measured in docs/benchmarks.md (quick: map50 0.88 held out)
BOOTSTRAP_DATA_SEED = 1000
BOOTSTRAP_TRAIN_SEED = 0
BOOTSTRAP_PRESET = "quick"


def _recipe_key(site: str) -> str:
    from defectloop.factory_sim import SIMULATOR_VERSION
    from defectloop.trainer import api

    digest = hashlib.sha256()
    digest.update(f"{site}|{SIMULATOR_VERSION}|{BOOTSTRAP_IMAGES}|{BOOTSTRAP_DATA_SEED}".encode())
    digest.update(f"|{BOOTSTRAP_TRAIN_SEED}|{BOOTSTRAP_PRESET}".encode())
    for name, content in api.config_files():
        digest.update(name.encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def bootstrap_bundle(site: str, *, say: Callable[[str], None] = print) -> Path:
    """The cached bootstrap bundle of ``site``; trains it (a few minutes) on first use."""
    require_trainer()

    root = cache_home() / "bootstrap" / f"{site}-{_recipe_key(site)}"
    bundle = root / "bundle"
    if _complete(bundle):
        return _signed(bundle)
    root.mkdir(parents=True, exist_ok=True)
    # Callers in several processes (the stack, a benchmark, a test) share the cache: one trains,
    # the others wait and then find its bundle (instead of deleting its half-written one).
    with FileLock(root.parent / f"{root.name}.lock"):
        if not _complete(bundle):
            _train(site, root, bundle, say)
    return _signed(bundle)


def bootstrap_data(bundle: Path) -> Path:
    """The simulated dataset a bootstrap bundle was trained on (next to it in the cache)."""
    return bundle.parent / "data"


def _signed(bundle: Path) -> Path:
    """Trained here by this project, so signed with the project key: inference loads only signed
    bundles, and a benchmark deploys this one without a registry (the trainer re-signs it when
    it registers it)."""
    from defectloop.common.signing import SIGNATURE_FILE, sign_bundle

    if not (bundle / SIGNATURE_FILE).is_file():
        sign_bundle(bundle)
    return bundle


def _complete(bundle: Path) -> bool:
    # model.json is written last: without it, an earlier attempt was interrupted.
    return (bundle / "model.onnx").is_file() and (bundle / "model.json").is_file()


def _train(site: str, root: Path, bundle: Path, say: Callable[[str], None]) -> None:
    from defectloop.cli.training import _progress_sink
    from defectloop.factory_sim import generate_dataset
    from defectloop.trainer import api

    data = root / "data"
    if not (data / "annotations.json").is_file():
        shutil.rmtree(data, ignore_errors=True)
        say(f"bootstrap model for site {site}: simulating {BOOTSTRAP_IMAGES} images")
        generate_dataset(site, BOOTSTRAP_IMAGES, BOOTSTRAP_DATA_SEED, data)
    say(f"bootstrap model for site {site}: training (preset {BOOTSTRAP_PRESET}, once, cached)")
    shutil.rmtree(bundle, ignore_errors=True)
    api.train(
        [data],
        preset=BOOTSTRAP_PRESET,
        seed=BOOTSTRAP_TRAIN_SEED,
        out_dir=bundle,
        site=site,
        progress=_progress_sink(f"bootstrap model {site}"),
    )
