"""Write a simulated dataset to disk: PNG images, COCO annotations, generator parameters.

Layout::

    out/dataset.json        generator parameters (written first)
    out/images/<site>_<seed>_<index:06d>.png
    out/annotations.json    COCO (written last, atomically: its presence marks a complete run)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.common.errors import InvalidInputError
from defectloop.factory_sim.coco import ImageRecord, to_coco
from defectloop.factory_sim.defects import CLASSES
from defectloop.factory_sim.drift import Drift
from defectloop.factory_sim.render import render
from defectloop.factory_sim.sites import SiteProfile, get_site
from defectloop.factory_sim.version import SIMULATOR_VERSION

DATASET_FILE = "dataset.json"
ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"

# Fixed encoder settings, so files are byte-identical across runs. On these noisy images the "up"
# filter with Huffman-only deflate is ~3x faster than the defaults and still smaller than level 1;
# OpenCV < 4.11 cannot pick the filter and falls back to its adaptive one (other bytes, same pixels).
_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):
    _PNG_PARAMS += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class DatasetSummary:
    """What ``generate_dataset`` wrote."""

    out_dir: Path
    site: str
    seed: int
    images: int
    annotations: int
    per_class: dict[str, int]
    empty_images: int
    seconds: float


def encode_png(pixels: npt.NDArray[np.uint8]) -> bytes:
    """Lossless 8-bit grayscale PNG, byte-identical for identical pixels."""
    ok, buf = cv2.imencode(".png", pixels, _PNG_PARAMS)
    if not ok:  # pragma: no cover - cv2 only fails on unsupported dtypes
        raise InvalidInputError("PNG encoding failed", hint="pixels must be a 2-D uint8 array")
    return buf.tobytes()


def image_file_name(site: str, seed: int, index: int) -> str:
    """``<site>_<seed>_<index:06d>.png``."""
    return f"{site}_{seed}_{index:06d}.png"


def _params(site: SiteProfile, n: int, seed: int, drifts: Sequence[Drift]) -> dict[str, Any]:
    params = {
        "generator": "defectloop.factory_sim",
        "simulator_version": SIMULATOR_VERSION,
        "site": site.name,
        "n": n,
        "seed": seed,
        "image_size": [site.width, site.height],
        "drifts": [d.to_dict() for d in drifts],
        "profile": dataclasses.asdict(site),
    }
    # Through JSON once so tuples compare equal to what a previous run wrote.
    normalised: dict[str, Any] = json.loads(json.dumps(params))
    return normalised


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _prepare(out: Path, params: dict[str, Any]) -> None:
    """Refuse a directory holding anything but a previous run of the same parameters."""
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"{out} is a file", hint="give a directory for the dataset")
    if out.is_dir() and any(out.iterdir()):
        previous: Any = None
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads((out / DATASET_FILE).read_text())
        if previous != params:
            raise InvalidInputError(
                f"{out} is not empty and does not hold a dataset with these parameters",
                hint="choose a new or empty directory, or delete this one",
            )
        # Same parameters: regenerate in place; drop the completion marker first so an
        # interrupted rerun is still detectable.
        (out / ANNOTATIONS_FILE).unlink(missing_ok=True)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    _write_atomic(out / DATASET_FILE, json.dumps(params, indent=2).encode())


def _render_and_write(
    site: SiteProfile, seed: int, drifts: tuple[Drift, ...], images_dir: Path, index: int
) -> ImageRecord:
    image = render(site, index, seed, drifts)
    png = encode_png(image.pixels)
    name = image_file_name(site.name, seed, index)
    _write_atomic(images_dir / name, png)
    return ImageRecord(
        image_id=index + 1,
        file_name=f"{IMAGES_DIR}/{name}",
        width=site.width,
        height=site.height,
        site=site.name,
        sha256=hashlib.sha256(png).hexdigest(),
        boxes=tuple(image.boxes),
    )


def _worker_init() -> None:
    # One OpenCV thread per process: the pool already uses the cores, oversubscribing slows it.
    cv2.setNumThreads(1)


def _records(
    site: SiteProfile, seed: int, drifts: tuple[Drift, ...], images_dir: Path, n: int, workers: int
) -> Iterator[ImageRecord]:
    if workers <= 1 or n < 2 * workers:
        for index in range(n):
            yield _render_and_write(site, seed, drifts, images_dir, index)
        return
    ctx = multiprocessing.get_context("spawn")  # fork is unsafe with threads (progress bars)
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool:
        futures = (
            pool.submit(_render_and_write, site, seed, drifts, images_dir, i) for i in range(n)
        )
        # Bounded window of in-flight work so memory stays flat for large n.
        window: list[Any] = []
        for future in futures:
            window.append(future)
            if len(window) >= 8 * workers:
                yield window.pop(0).result()
        for future in window:
            yield future.result()


def generate_dataset(
    site: SiteProfile | str,
    n: int,
    seed: int,
    out_dir: str | os.PathLike[str],
    drifts: Iterable[Drift] = (),
    progress: Progress | None = None,
    workers: int = 1,
) -> DatasetSummary:
    """Render images ``0..n-1`` of ``site`` into ``out_dir`` as a COCO dataset.

    ``progress(done, n)`` is called after each image. Rerunning with the same parameters into
    the same directory rewrites the same bytes.
    """
    profile = get_site(site) if isinstance(site, str) else site
    if n < 1:
        raise InvalidInputError(f"n must be >= 1, got {n}", hint="ask for at least one image")
    if seed < 0:
        raise InvalidInputError(f"seed must be >= 0, got {seed}", hint="use a non-negative seed")
    drifts = tuple(drifts)
    out = Path(out_dir)
    params = _params(profile, n, seed, drifts)
    started = time.perf_counter()
    _prepare(out, params)

    records: list[ImageRecord] = []
    for record in _records(profile, seed, drifts, out / IMAGES_DIR, n, workers):
        records.append(record)
        if progress is not None:
            progress(len(records), n)

    doc = to_coco(records, info={"description": f"factory-sim site {profile.name}", **params})
    _write_atomic(out / ANNOTATIONS_FILE, json.dumps(doc).encode())

    per_class = dict.fromkeys(CLASSES, 0)
    for record in records:
        for box in record.boxes:
            per_class[box.label] += 1
    return DatasetSummary(
        out_dir=out,
        site=profile.name,
        seed=seed,
        images=len(records),
        annotations=sum(per_class.values()),
        per_class=per_class,
        empty_images=sum(1 for r in records if not r.boxes),
        seconds=time.perf_counter() - started,
    )


def is_complete(out_dir: str | os.PathLike[str]) -> bool:
    """Whether ``out_dir`` holds a finished dataset (not an interrupted run)."""
    out = Path(out_dir)
    return (out / DATASET_FILE).is_file() and (out / ANNOTATIONS_FILE).is_file()
