"""COCO detection annotations for simulated datasets."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from defectloop.factory_sim.defects import CATEGORY_IDS, Box


@dataclass(frozen=True)
class ImageRecord:
    """One written image and its ground truth."""

    image_id: int
    file_name: str
    width: int
    height: int
    site: str
    sha256: str
    boxes: tuple[Box, ...]


def categories() -> list[dict[str, Any]]:
    """COCO ``categories``: scratch=1, spot=2, crack=3."""
    return [{"id": cid, "name": name} for name, cid in CATEGORY_IDS.items()]


def to_coco(records: Iterable[ImageRecord], info: dict[str, Any] | None = None) -> dict[str, Any]:
    """A COCO document; annotation ids run from 1 in image order."""
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for rec in sorted(records, key=lambda r: r.image_id):
        images.append(
            {
                "id": rec.image_id,
                "file_name": rec.file_name,
                "width": rec.width,
                "height": rec.height,
                "site": rec.site,
                "sha256": rec.sha256,
            }
        )
        for box in rec.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": rec.image_id,
                    "category_id": box.category_id,
                    "bbox": [float(box.x), float(box.y), float(box.w), float(box.h)],
                    "area": float(box.w * box.h),
                    "iscrowd": 0,
                }
            )
    doc: dict[str, Any] = {
        "info": info or {},
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    return doc


def coco_problems(doc: dict[str, Any]) -> list[str]:
    """What is wrong with a COCO detection document (empty when it is valid)."""
    problems: list[str] = []
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            problems.append(f"missing list {key!r}")
    if problems:
        return problems
    cat_ids = [c.get("id") for c in doc["categories"]]
    if len(set(cat_ids)) != len(cat_ids):
        problems.append("duplicate category ids")
    sizes: dict[Any, tuple[float, float]] = {}
    for img in doc["images"]:
        if img.get("id") in sizes:
            problems.append(f"duplicate image id {img.get('id')}")
        sizes[img.get("id")] = (img.get("width", 0), img.get("height", 0))
    ann_ids: set[Any] = set()
    for ann in doc["annotations"]:
        aid = ann.get("id")
        if aid in ann_ids:
            problems.append(f"duplicate annotation id {aid}")
        ann_ids.add(aid)
        if ann.get("image_id") not in sizes:
            problems.append(f"annotation {aid} refers to unknown image {ann.get('image_id')}")
            continue
        if ann.get("category_id") not in cat_ids:
            problems.append(f"annotation {aid} has unknown category {ann.get('category_id')}")
        bbox = ann.get("bbox")
        width, height = sizes[ann["image_id"]]
        if not (isinstance(bbox, list) and len(bbox) == 4):
            problems.append(f"annotation {aid} bbox is not [x, y, w, h]")
        elif bbox[0] < 0 or bbox[1] < 0 or bbox[2] <= 0 or bbox[3] <= 0:
            problems.append(f"annotation {aid} bbox {bbox} is degenerate or negative")
        elif bbox[0] + bbox[2] > width or bbox[1] + bbox[3] > height:
            problems.append(f"annotation {aid} bbox {bbox} leaves the image")
    return problems
