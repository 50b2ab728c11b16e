"""Fixtures for defectloop.vision tests: tiny bundles (defectloop.testing.bundles), COCO datasets."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from defectloop.testing.bundles import BundleBuilder

BundleFactory = Callable[..., Path]


@pytest.fixture
def make_bundle(tmp_path: Path) -> BundleFactory:
    """A tiny bundle's directory (input 64x64, ``DEFAULT_BOXES`` unless ``boxes`` is given)."""
    build = BundleBuilder(tmp_path)
    return lambda *args, **kwargs: build(*args, **kwargs).path


DatasetFactory = Callable[..., Path]

# DEFAULT_BOXES (input 64x64) seen in a 128x96 original image: x scaled by 2, y by 1.5
ORIGINAL_SIZE = (128, 96)
DEFAULT_BOXES_ORIGINAL = {"scratch": [26.0, 28.5, 20.0, 9.0], "crack": [83.0, 51.375, 16.0, 18.0]}


@pytest.fixture
def make_dataset(tmp_path: Path) -> DatasetFactory:
    """A COCO dataset dir; each image gets the given {category name: bbox} ground truth."""
    import cv2

    def factory(
        per_image: list[dict[str, list[float]]],
        *,
        categories: dict[str, int] | None = None,
        size: tuple[int, int] = ORIGINAL_SIZE,
    ) -> Path:
        root = tmp_path / "dataset"
        (root / "images").mkdir(parents=True)
        cats = categories or {"scratch": 3, "crack": 7}
        images, annotations = [], []
        for i, boxes in enumerate(per_image, start=1):
            name = f"img{i:03d}.png"
            cv2.imwrite(str(root / "images" / name), np.full((size[1], size[0]), 100, np.uint8))
            images.append({"id": i, "file_name": name, "width": size[0], "height": size[1]})
            for label, bbox in boxes.items():
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i,
                        "category_id": cats[label],
                        "bbox": bbox,
                        "area": bbox[2] * bbox[3],
                        "iscrowd": 0,
                    }
                )
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": cid, "name": name} for name, cid in cats.items()],
        }
        (root / "annotations.json").write_text(json.dumps(coco))
        return root

    return factory
