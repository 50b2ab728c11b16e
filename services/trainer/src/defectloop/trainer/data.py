"""COCO dataset directories → in-memory training samples, deterministic split, CenterNet targets.

A dataset dir is ``images/*.png`` + ``annotations.json`` (COCO, written by the factory simulator
or exported from annotations). Images are decoded once, resized to the network input exactly as
``defectloop.vision.preprocess`` does at serving time (cv2 INTER_AREA, no letterbox) and kept in
memory as uint8: a few hundred 256x256 images are a few tens of MB.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from defectloop.common.errors import InvalidInputError, NotFoundError
from defectloop.trainer.augment import augment, random_crop
from defectloop.trainer.config import AugmentConfig
from defectloop.vision.coco import ANNOTATIONS_FILE, load_coco_dataset

STRIDE = 4
# Normalisation shared with the bundle manifest (defectloop.vision.manifest.Preprocessing).
MEAN = 0.5
STD = 0.25


@dataclass(frozen=True)
class Sample:
    """One annotated image of a dataset dir, boxes in ORIGINAL pixels (COCO x, y, w, h)."""

    dataset: int  # index of its dataset dir in the run's list
    file_name: str
    path: Path
    sha256: str
    width: int
    height: int
    site: str | None
    boxes: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]  # index into the config's labels
    annotation_ids: tuple[int, ...]
    annotations_sha256: str  # of the canonical JSON of this image's annotations


@dataclass
class Dataset:
    samples: list[Sample]
    train: list[int] = field(default_factory=list)  # indices into samples
    val: list[int] = field(default_factory=list)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_coco_dir(
    directory: Path, labels: Sequence[str], *, dataset_index: int = 0, site: str | None = None
) -> list[Sample]:
    """Read one COCO dir; categories are matched to ``labels`` by name."""
    directory = Path(directory)
    # The shared loader validates structure and references with one clear error each.
    coco = load_coco_dataset(directory)
    ann_path = directory / ANNOTATIONS_FILE
    # It drops non-COCO keys; the simulator's per-image ``site`` is read from the raw file.
    raw_images = json.loads(ann_path.read_bytes()).get("images", [])
    site_of = {int(i["id"]): i.get("site") for i in raw_images if isinstance(i, dict)}
    name_to_index = {name: i for i, name in enumerate(labels)}
    cat_to_index: dict[int, int] = {}
    for cat in coco.categories:
        if cat.name not in name_to_index:
            raise InvalidInputError(
                f"{ann_path}: category {cat.name!r} is not one of the model labels {list(labels)}",
                hint="set `labels` in the training config to include it",
            )
        cat_to_index[cat.id] = name_to_index[cat.name]

    samples: list[Sample] = []
    # Sorted by file name: the order of a JSON list must not change what a run does.
    for img in sorted(coco.images, key=lambda i: i.file_name):
        img_site = site_of.get(img.id)
        if site is not None and img_site not in (None, site):
            continue
        path = coco.image_path(img)
        if not path.is_file():
            raise NotFoundError(f"image {img.file_name} listed in {ann_path} is missing")
        anns = sorted((a for a in coco.annotations_of(img.id) if not a.iscrowd), key=lambda a: a.id)
        boxes = np.array([a.bbox for a in anns], dtype=np.float32).reshape(-1, 4)
        cls = np.array([cat_to_index[a.category_id] for a in anns], dtype=np.int64)
        canonical = json.dumps(
            [
                {
                    "id": a.id,
                    "bbox": [float(v) for v in a.bbox],
                    "label": labels[cat_to_index[a.category_id]],
                }
                for a in anns
            ],
            sort_keys=True,
            separators=(",", ":"),
        )
        samples.append(
            Sample(
                dataset=dataset_index,
                file_name=img.file_name,
                path=path,
                sha256=_sha256_file(path),
                width=img.width,
                height=img.height,
                site=img_site,
                boxes=boxes,
                labels=cls,
                annotation_ids=tuple(a.id for a in anns),
                annotations_sha256=hashlib.sha256(canonical.encode()).hexdigest(),
            )
        )
    return samples


def load_datasets(
    dirs: Sequence[Path], labels: Sequence[str], *, site: str | None = None, val_fraction: float
) -> Dataset:
    """Load and split several dataset dirs into one :class:`Dataset`."""
    samples: list[Sample] = []
    for i, d in enumerate(dirs):
        samples.extend(load_coco_dir(Path(d), labels, dataset_index=i, site=site))
    if not samples:
        hint = f"no image of site {site!r}; check --site" if site else "the dataset dirs are empty"
        raise InvalidInputError("no training images found", hint=hint)
    ds = Dataset(samples=samples)
    ds.train, ds.val = split(samples, val_fraction)
    return ds


def split(samples: Sequence[Sample], val_fraction: float) -> tuple[list[int], list[int]]:
    """Deterministic hold-out by image content: the lowest ``val_fraction`` of sha256 digests.

    Content-keyed, so the split of an image does not depend on file order, the seed or which
    other dataset dirs were passed alongside it (duplicates across dirs land on the same side).
    """
    order = sorted(range(len(samples)), key=lambda i: (samples[i].sha256, samples[i].file_name))
    n_val = round(len(samples) * val_fraction)
    if val_fraction > 0 and len(samples) >= 2:
        n_val = max(1, n_val)
    n_val = min(n_val, len(samples) - 1)
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return train, val


@dataclass(frozen=True)
class Resized:
    """Images resized to the network input, boxes scaled per axis to input pixels."""

    images: npt.NDArray[np.uint8]  # [N, H, W]
    boxes: list[npt.NDArray[np.float32]]
    labels: list[npt.NDArray[np.int64]]


def load_resized(samples: Sequence[Sample], input_size: tuple[int, int]) -> Resized:
    h_in, w_in = input_size
    images = np.empty((len(samples), h_in, w_in), dtype=np.uint8)
    boxes: list[npt.NDArray[np.float32]] = []
    for i, s in enumerate(samples):
        img = cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise InvalidInputError(f"cannot decode image {s.path}")
        h, w = img.shape
        images[i] = (
            img
            if (h, w) == (h_in, w_in)
            else cv2.resize(img, (w_in, h_in), interpolation=cv2.INTER_AREA)
        )
        scale = np.array([w_in / w, h_in / h, w_in / w, h_in / h], dtype=np.float32)
        boxes.append(s.boxes * scale)
    return Resized(images=images, boxes=boxes, labels=[s.labels for s in samples])


def normalise(
    images: npt.NDArray[np.floating[Any]] | npt.NDArray[np.uint8],
) -> npt.NDArray[np.float32]:
    """Gray levels → network input, as ``defectloop.vision.preprocess`` does."""
    out = np.asarray(images, dtype=np.float32) / np.float32(255.0)
    out -= np.float32(MEAN)
    out /= np.float32(STD)
    return out


def gaussian_radius(h: float, w: float, min_overlap: float = 0.7) -> float:
    """CenterNet's radius: the largest centre shift keeping IoU >= min_overlap (in cells)."""
    a1, b1 = 1.0, h + w
    c1 = w * h * (1 - min_overlap) / (1 + min_overlap)
    r1 = (b1 + math.sqrt(b1**2 - 4 * a1 * c1)) / 2
    a2, b2 = 4.0, 2 * (h + w)
    c2 = (1 - min_overlap) * w * h
    r2 = (b2 + math.sqrt(b2**2 - 4 * a2 * c2)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * (h + w)
    c3 = (min_overlap - 1) * w * h
    r3 = (b3 + math.sqrt(b3**2 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def make_targets(
    boxes: npt.NDArray[np.float32],
    labels: npt.NDArray[np.int64],
    num_classes: int,
    input_size: tuple[int, int],
) -> tuple[npt.NDArray[np.float32], ...]:
    """Heatmap [C,h,w], size [2,h,w] (input px), offset [2,h,w] (cells), mask [1,h,w]."""
    gh, gw = input_size[0] // STRIDE, input_size[1] // STRIDE
    heat = np.zeros((num_classes, gh, gw), np.float32)
    size = np.zeros((2, gh, gw), np.float32)
    offset = np.zeros((2, gh, gw), np.float32)
    mask = np.zeros((1, gh, gw), np.float32)
    ys_grid = np.arange(gh, dtype=np.float32)[:, None]
    xs_grid = np.arange(gw, dtype=np.float32)[None, :]
    # Large boxes first, so that a small box sharing a cell keeps its own size/offset target.
    order: npt.NDArray[np.intp] | list[int] = (
        np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable") if len(boxes) else []
    )
    for k in order:
        x, y, w, h = (float(v) for v in boxes[k])
        if w <= 0 or h <= 0:
            continue
        cx, cy = (x + w / 2) / STRIDE, (y + h / 2) / STRIDE
        ix, iy = min(int(cx), gw - 1), min(int(cy), gh - 1)
        radius = max(0.0, gaussian_radius(h / STRIDE, w / STRIDE))
        sigma = (2 * int(radius) + 1) / 6
        g = np.exp(-((xs_grid - ix) ** 2 + (ys_grid - iy) ** 2) / (2 * sigma * sigma))
        c = int(labels[k])
        np.maximum(heat[c], g.astype(np.float32), out=heat[c])
        heat[c, iy, ix] = 1.0
        size[:, iy, ix] = (w, h)
        offset[:, iy, ix] = (cx - ix, cy - iy)
        mask[0, iy, ix] = 1.0
    return heat, size, offset, mask


@dataclass(frozen=True)
class Batch:
    image: npt.NDArray[np.float32]
    heatmap: npt.NDArray[np.float32]
    size: npt.NDArray[np.float32]
    offset: npt.NDArray[np.float32]
    mask: npt.NDArray[np.float32]


def iterate_batches(
    data: Resized,
    indices: Sequence[int],
    *,
    batch_size: int,
    num_classes: int,
    augment_cfg: AugmentConfig | None,
    rng: np.random.Generator,
    shuffle: bool,
    crop: tuple[int, int] | None = None,
    crop_on_object: float = 0.0,
) -> Iterator[Batch]:
    """Yield batches in-process (no DataLoader workers: one RNG stream, hence reproducible)."""
    order = np.asarray(indices, dtype=np.int64)
    if shuffle:
        order = order[rng.permutation(len(order))]
    input_size = crop or (int(data.images.shape[1]), int(data.images.shape[2]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        imgs, heats, sizes, offs, masks = [], [], [], [], []
        for i in chunk:
            if augment_cfg is not None:
                img, b, lab = augment(
                    data.images[i], data.boxes[i], data.labels[i], augment_cfg, rng
                )
            else:
                img, b, lab = data.images[i].astype(np.float32), data.boxes[i], data.labels[i]
            if crop is not None:
                img, b, lab = random_crop(img, b, lab, crop, crop_on_object, rng)
            heat, size, off, mask = make_targets(b, lab, num_classes, input_size)
            imgs.append(normalise(img)[None])
            heats.append(heat)
            sizes.append(size)
            offs.append(off)
            masks.append(mask)
        yield Batch(
            image=np.stack(imgs),
            heatmap=np.stack(heats),
            size=np.stack(sizes),
            offset=np.stack(offs),
            mask=np.stack(masks),
        )
