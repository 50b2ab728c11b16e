"""Fixtures: a tiny synthetic COCO dataset dir (independent of the simulator) and an isolated home."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from defectloop.testing.datasets import make_coco_dir
from defectloop.testing.state import isolate_state


@pytest.fixture(scope="session")
def coco_factory() -> Callable[..., Path]:
    """``make_coco_dir`` for module-scoped fixtures (conftest is not importable by tests)."""
    return make_coco_dir


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    return make_coco_dir(tmp_path / "ds")


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_state(monkeypatch, tmp_path)


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
                site_id=site,
                camera_id="cam-1",
                image_id=image_id,
                sha256=digest,
                blob_uri=blobs.put(png, suffix=".png"),
                captured_at=at,
                width=128,
                height=128,
                quality=QualityMetrics(
                    sharpness=50.0, brightness=120.0, contrast=20.0, uniform=False
                ),
            )
            label = AnnotationCompleted(
                site_id=site,
                camera_id="cam-1",
                image_id=image_id,
                annotation_id=f"ls-{image_id}",
                annotator="alice",
                status=AnnotationStatus.COMPLETED,
                boxes=tuple(Box(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h) for b in image.boxes),
                sampling_reason="random",
                lead_time_s=3.0,
                occurred_at=at + timedelta(minutes=1),
            )
            pairs.append((event, label))
        return pairs

    return make
