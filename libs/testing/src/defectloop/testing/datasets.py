"""Tiny synthetic COCO datasets (independent of the simulator) for training and CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

LABELS = ("scratch", "spot", "crack")


def make_coco_dir(root: Path, n: int = 16, size: int = 128, seed: int = 0) -> Path:
    """Gray textured images with a bright spot, a dark line or a crack-like polyline."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    ann_id = 1
    for i in range(n):
        img = (rng.normal(120, 6, (size, size))).clip(0, 255).astype(np.uint8)
        k = int(rng.integers(0, 3))
        if i % 4 != 3:  # every 4th image is defect-free
            x, y = (int(v) for v in rng.integers(16, size - 40, 2))
            w, h = (int(v) for v in rng.integers(10, 28, 2))
            if k == 1:
                cv2.ellipse(img, (x + w // 2, y + h // 2), (w // 2, h // 2), 0, 0, 360, 200, -1)
            elif k == 0:
                cv2.line(img, (x, y), (x + w, y + h), 40, 2)
            else:
                cv2.polylines(img, [np.array([[x, y], [x + w // 2, y + h], [x + w, y]])], False, 30, 2)
            annotations.append(
                {"id": ann_id, "image_id": i + 1, "category_id": k + 1,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )
            ann_id += 1
        name = f"img_{i:04d}.png"
        cv2.imwrite(str(root / "images" / name), img)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size, "site": "A"})
    doc = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": j + 1, "name": name} for j, name in enumerate(LABELS)],
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root
