"""Dataset writer: layout, COCO structure, reruns, refusal, completion marker."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from defectloop.common.errors import InvalidInputError
from defectloop.factory_sim import CLASSES, SITES, Drift, generate_dataset, is_complete, render
from defectloop.factory_sim.coco import coco_problems

SMALL = SITES["B"].with_size(128)


def _coco(out: Path) -> dict:
    return json.loads((out / "annotations.json").read_text())


@pytest.mark.unit
def test_writes_pngs_annotations_and_params(tmp_path: Path) -> None:
    summary = generate_dataset(SMALL, 6, 3, tmp_path, [Drift("blur", 4)])
    names = sorted(p.name for p in (tmp_path / "images").iterdir())
    assert names == [f"B_3_{i:06d}.png" for i in range(6)]
    params = json.loads((tmp_path / "dataset.json").read_text())
    assert (params["site"], params["n"], params["seed"]) == ("B", 6, 3)
    assert params["drifts"] == [{"kind": "blur", "start_index": 4, "severity": 0.5}]
    assert summary.images == 6
    assert is_complete(tmp_path)


@pytest.mark.unit
def test_png_is_lossless_gray_and_matches_render(tmp_path: Path) -> None:
    generate_dataset(SMALL, 2, 3, tmp_path)
    read = cv2.imread(str(tmp_path / "images" / "B_3_000001.png"), cv2.IMREAD_UNCHANGED)
    assert (read.dtype, read.ndim) == (np.uint8, 2)
    assert np.array_equal(read, render(SMALL, 1, 3).pixels)


@pytest.mark.unit
def test_coco_document_is_valid(tmp_path: Path) -> None:
    generate_dataset(SMALL, 30, 5, tmp_path)
    doc = _coco(tmp_path)
    assert coco_problems(doc) == []
    assert [c["name"] for c in sorted(doc["categories"], key=lambda c: c["id"])] == list(CLASSES)
    assert [c["id"] for c in sorted(doc["categories"], key=lambda c: c["id"])] == [1, 2, 3]
    assert len(doc["annotations"]) > 0
    for ann in doc["annotations"]:
        assert ann["iscrowd"] == 0
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]


@pytest.mark.unit
def test_coco_images_record_site_and_png_sha256(tmp_path: Path) -> None:
    generate_dataset(SMALL, 3, 5, tmp_path)
    for img in _coco(tmp_path)["images"]:
        data = (tmp_path / img["file_name"]).read_bytes()
        assert img["sha256"] == hashlib.sha256(data).hexdigest()
        assert img["site"] == "B"
        assert (img["width"], img["height"]) == (128, 128)


@pytest.mark.unit
def test_coco_boxes_match_rendered_ground_truth(tmp_path: Path) -> None:
    generate_dataset(SMALL, 10, 5, tmp_path)
    doc = _coco(tmp_path)
    written = sorted(
        (a["image_id"], tuple(a["bbox"]), a["category_id"]) for a in doc["annotations"]
    )
    expected = sorted(
        (i + 1, (float(b.x), float(b.y), float(b.w), float(b.h)), b.category_id)
        for i in range(10)
        for b in render(SMALL, i, 5).boxes
    )
    assert written == expected


@pytest.mark.unit
def test_same_parameters_give_identical_files(tmp_path: Path) -> None:
    generate_dataset(SMALL, 8, 1, tmp_path / "a")
    generate_dataset(SMALL, 8, 1, tmp_path / "b")
    assert _coco(tmp_path / "a") == _coco(tmp_path / "b")


@pytest.mark.unit
def test_parallel_workers_write_the_same_dataset(tmp_path: Path) -> None:
    generate_dataset(SMALL, 8, 1, tmp_path / "serial")
    generate_dataset(SMALL, 8, 1, tmp_path / "parallel", workers=2)
    assert _coco(tmp_path / "serial") == _coco(tmp_path / "parallel")


@pytest.mark.unit
def test_rerun_with_same_parameters_is_allowed(tmp_path: Path) -> None:
    generate_dataset(SMALL, 4, 1, tmp_path)
    first = _coco(tmp_path)
    generate_dataset(SMALL, 4, 1, tmp_path)
    assert _coco(tmp_path) == first


@pytest.mark.unit
def test_refuses_a_directory_with_other_content(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty"):
        generate_dataset(SMALL, 2, 1, tmp_path)


@pytest.mark.unit
def test_refuses_a_dataset_with_other_parameters(tmp_path: Path) -> None:
    generate_dataset(SMALL, 2, 1, tmp_path)
    with pytest.raises(InvalidInputError, match="not empty"):
        generate_dataset(SMALL, 2, 2, tmp_path)


@pytest.mark.unit
def test_interrupted_run_is_detectable(tmp_path: Path) -> None:
    calls = 0

    def stop_after_two(done: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_dataset(SMALL, 5, 1, tmp_path, progress=stop_after_two)
    assert (tmp_path / "dataset.json").exists()
    assert not is_complete(tmp_path)


@pytest.mark.unit
def test_progress_reports_every_image(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    generate_dataset(SMALL, 3, 1, tmp_path, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


@pytest.mark.unit
def test_unknown_site_name_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError) as info:
        generate_dataset("Z", 2, 1, tmp_path)
    assert "A, B, C" in (info.value.hint or "")
