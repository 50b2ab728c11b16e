from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectloop.common.errors import InvalidInputError, NotFoundError
from defectloop.vision.coco import load_coco_dataset
from defectloop.vision.evaluate import evaluate_bundle

from .conftest import DEFAULT_BOXES_ORIGINAL, BundleFactory, DatasetFactory

pytestmark = pytest.mark.unit


def test_perfect_model_scores_one_and_results_use_dataset_category_ids(
    make_bundle: BundleFactory, make_dataset: DatasetFactory
) -> None:
    dataset = make_dataset([DEFAULT_BOXES_ORIGINAL] * 3)
    report = evaluate_bundle(make_bundle(), dataset, batch_size=2, providers="cpu")
    assert report.map50 == pytest.approx(1.0)
    assert report.per_class_ap["scratch"] == pytest.approx(1.0)
    assert report.per_class_ap["spot"] is None  # the model knows it, the dataset has none
    assert (report.precision, report.recall, report.n_images) == (1.0, 1.0, 3)
    assert sorted({r.category_id for r in report.predictions}) == [3, 7]


def test_image_without_defect_flagged_defective_is_a_false_positive(
    make_bundle: BundleFactory, make_dataset: DatasetFactory
) -> None:
    dataset = make_dataset([DEFAULT_BOXES_ORIGINAL, DEFAULT_BOXES_ORIGINAL, {}])
    report = evaluate_bundle(make_bundle(), dataset, providers="cpu")
    assert report.confusion == {"tp": 2, "fp": 1, "fn": 0, "tn": 0}
    assert report.precision == pytest.approx(2 / 3)


def test_category_unknown_to_the_model_scores_zero_ap(
    make_bundle: BundleFactory, make_dataset: DatasetFactory
) -> None:
    gt = {**DEFAULT_BOXES_ORIGINAL, "dent": [1.0, 1.0, 5.0, 5.0]}
    dataset = make_dataset([gt], categories={"scratch": 1, "crack": 2, "dent": 3})
    report = evaluate_bundle(make_bundle(), dataset, providers="cpu")
    assert report.per_class_ap["dent"] == 0.0
    assert report.map50 == pytest.approx(2 / 3)


def test_progress_reports_every_batch(
    make_bundle: BundleFactory, make_dataset: DatasetFactory
) -> None:
    calls: list[tuple[int, int]] = []
    dataset = make_dataset([DEFAULT_BOXES_ORIGINAL] * 5)
    evaluate_bundle(make_bundle(), dataset, batch_size=2, progress=lambda *a: calls.append(a))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_missing_dataset_dir_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_coco_dataset(tmp_path / "nope")


def test_dataset_without_annotations_file_is_invalid(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"no annotations\.json") as info:
        load_coco_dataset(tmp_path)
    assert info.value.hint is not None


def test_annotation_pointing_at_unknown_image_is_invalid(tmp_path: Path) -> None:
    coco = {
        "images": [],
        "annotations": [{"id": 1, "image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1]}],
        "categories": [{"id": 1, "name": "spot"}],
    }
    (tmp_path / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(InvalidInputError, match="unknown image 9"):
        load_coco_dataset(tmp_path)


def test_malformed_annotations_json_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "annotations.json").write_text('{"images": [}')
    with pytest.raises(InvalidInputError, match="not valid JSON"):
        load_coco_dataset(tmp_path)
