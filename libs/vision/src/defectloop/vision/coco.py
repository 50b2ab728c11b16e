"""COCO dataset directories (``DIR/annotations.json`` + ``DIR/images/*.png``) and result files.

``file_name`` of an image is relative to ``DIR/images/`` (a leading ``images/`` is accepted too).
Boxes are COCO ``[x, y, w, h]`` in pixels; categories are matched to model labels by name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from defectloop.common.errors import InvalidInputError, NotFoundError

ANNOTATIONS_FILE = "annotations.json"
IMAGES_DIR = "images"
_HINT = "a COCO dataset is DIR/annotations.json + DIR/images/*.png, bbox = x, y, w, h in pixels"


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class CocoImage(_Lenient):
    id: int
    file_name: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CocoCategory(_Lenient):
    id: int
    name: str


class CocoAnnotation(_Lenient):
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0


class CocoFile(_Lenient):
    images: list[CocoImage]
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory]


class CocoResult(_Lenient):
    """One detection in the COCO results format (what ``COCO.loadRes`` reads)."""

    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    score: float


class CocoDataset:
    """A loaded COCO dataset directory."""

    def __init__(self, root: Path, data: CocoFile) -> None:
        self.root = root
        self.images = data.images
        self.categories = data.categories
        self.annotations = data.annotations
        self._by_image: dict[int, list[CocoAnnotation]] = {img.id: [] for img in self.images}
        for ann in self.annotations:
            self._by_image[ann.image_id].append(ann)

    @property
    def category_names(self) -> dict[int, str]:
        return {c.id: c.name for c in self.categories}

    def annotations_of(self, image_id: int) -> list[CocoAnnotation]:
        return self._by_image[image_id]

    def image_path(self, image: CocoImage) -> Path:
        name = image.file_name.removeprefix(f"{IMAGES_DIR}/")
        return self.root / IMAGES_DIR / name

    def read_image(self, image: CocoImage) -> npt.NDArray[np.uint8]:
        """The image as uint8 grayscale, checked against its recorded size."""
        path = self.image_path(image)
        if not path.is_file():
            raise NotFoundError(f"image {image.id} missing: {path}", hint=_HINT)
        pixels = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if pixels is None:
            raise InvalidInputError(f"cannot decode image {path}", hint="images must be PNG files")
        if pixels.shape != (image.height, image.width):
            raise InvalidInputError(
                f"{path} is {pixels.shape[1]}x{pixels.shape[0]} but annotations.json says "
                f"{image.width}x{image.height}",
                hint=_HINT,
            )
        return np.asarray(pixels, dtype=np.uint8)


def load_coco_dataset(directory: str | os.PathLike[str]) -> CocoDataset:
    """Load and check a COCO dataset directory; one clear error for anything malformed."""
    root = Path(directory)
    path = root / ANNOTATIONS_FILE
    if not root.is_dir():
        raise NotFoundError(f"dataset directory {root} does not exist", hint=_HINT)
    if not path.is_file():
        raise InvalidInputError(f"{root} has no {ANNOTATIONS_FILE}", hint=_HINT)
    try:
        raw: Any = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"{path} is not valid JSON: {exc}", hint=_HINT) from exc
    try:
        data = CocoFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise InvalidInputError(f"{path}: {where}: {first['msg']}", hint=_HINT) from exc
    _check_references(path, data)
    return CocoDataset(root, data)


def _check_references(path: Path, data: CocoFile) -> None:
    image_ids = [img.id for img in data.images]
    if len(set(image_ids)) != len(image_ids):
        raise InvalidInputError(f"{path}: duplicate image ids", hint=_HINT)
    names = [c.name for c in data.categories]
    if len(set(names)) != len(names) or len({c.id for c in data.categories}) != len(names):
        raise InvalidInputError(f"{path}: duplicate category ids or names", hint=_HINT)
    known_images, known_categories = set(image_ids), {c.id for c in data.categories}
    for ann in data.annotations:
        if ann.image_id not in known_images:
            raise InvalidInputError(
                f"{path}: annotation {ann.id} refers to unknown image {ann.image_id}", hint=_HINT
            )
        if ann.category_id not in known_categories:
            raise InvalidInputError(
                f"{path}: annotation {ann.id} refers to unknown category {ann.category_id}",
                hint=_HINT,
            )
        if ann.bbox[2] <= 0 or ann.bbox[3] <= 0:
            raise InvalidInputError(
                f"{path}: annotation {ann.id} has an empty bbox {list(ann.bbox)}", hint=_HINT
            )


def write_results(path: str | os.PathLike[str], results: Sequence[CocoResult]) -> None:
    """Write detections as a COCO results JSON list (loadable with ``COCO.loadRes``)."""
    payload = [r.model_dump(mode="json") for r in results]
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(payload) + "\n")
