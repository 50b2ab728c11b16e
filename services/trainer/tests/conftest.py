"""Fixtures: a tiny synthetic COCO dataset dir (independent of the simulator) and an isolated home."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

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


@pytest.fixture(scope="session")
def coco_factory() -> Callable[..., Path]:
    """``make_coco_dir`` for module-scoped fixtures (conftest is not importable by tests)."""
    return make_coco_dir


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    return make_coco_dir(tmp_path / "ds")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("DEFECTLOOP_HOME", str(home))
    monkeypatch.delenv("DEFECTLOOP_TRAINER_DB_URL", raising=False)
    monkeypatch.delenv("DEFECTLOOP_TRAINER_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return home


@pytest.fixture(scope="session")
def sim_labelled() -> Callable[..., list[tuple[Any, Any]]]:
    """``make(blobs, site, n, captured_at, seed=0)``: factory-sim PNGs put in the blob store, as
    ``(ImageCaptured, AnnotationCompleted)`` pairs whose boxes are the simulator's truth."""
    import dataclasses
    from datetime import timedelta

    from defectloop.common.events import (
        AnnotationCompleted,
        AnnotationStatus,
        Box,
        ImageCaptured,
        QualityMetrics,
        image_id_for,
        sha256_hex,
    )
    from defectloop.factory_sim.dataset import encode_png
    from defectloop.factory_sim.render import render
    from defectloop.factory_sim.sites import get_site

    def make(
        blobs: Any, site: str, n: int, captured_at: Any, *, seed: int = 0, profile: str = "A"
    ) -> list[tuple[Any, Any]]:
        # 128 px frames: real simulator images, ten times cheaper to render than 512 px.
        sim_site = dataclasses.replace(get_site(profile), width=128, height=128)
        pairs = []
        for i in range(n):
            image = render(sim_site, i, seed)
            png = encode_png(image.pixels)
            digest = sha256_hex(png)
            image_id = image_id_for(site, "cam-1", digest)
            at = captured_at + timedelta(seconds=i)
            event = ImageCaptured(
                site_id=site, camera_id="cam-1", image_id=image_id, sha256=digest,
                blob_uri=blobs.put(png, suffix=".png"), captured_at=at, width=128, height=128,
                quality=QualityMetrics(sharpness=50.0, brightness=120.0, contrast=20.0,
                                       uniform=False),
            )
            label = AnnotationCompleted(
                site_id=site, camera_id="cam-1", image_id=image_id,
                annotation_id=f"ls-{image_id}", annotator="alice",
                status=AnnotationStatus.COMPLETED,
                boxes=tuple(Box(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h) for b in image.boxes),
                sampling_reason="random", lead_time_s=3.0, occurred_at=at + timedelta(minutes=1),
            )
            pairs.append((event, label))
        return pairs

    return make
