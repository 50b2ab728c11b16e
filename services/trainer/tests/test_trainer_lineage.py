from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.trainer.data import load_datasets
from defectloop.trainer.lineage import dataset_manifest, dataset_version

pytestmark = pytest.mark.unit

LABELS = ("scratch", "spot", "crack")


def _version(*dirs: Path, site: str | None = None) -> str:
    ds = load_datasets(list(dirs), LABELS, site=site, val_fraction=0.25)
    return dataset_version(dataset_manifest(ds, site=site))


def test_dataset_version_is_stable(coco_dir: Path) -> None:
    assert _version(coco_dir) == _version(coco_dir)


def test_dataset_version_changes_when_one_image_byte_changes(coco_dir: Path) -> None:
    before = _version(coco_dir)
    image = sorted((coco_dir / "images").glob("*.png"))[0]
    data = bytearray(image.read_bytes())
    data[-20] ^= 0xFF  # flip a byte inside the PNG (the file hash changes)
    image.write_bytes(bytes(data))
    assert _version(coco_dir) != before


def test_dataset_version_changes_when_a_box_moves(coco_dir: Path) -> None:
    import json

    before = _version(coco_dir)
    path = coco_dir / "annotations.json"
    doc = json.loads(path.read_text())
    doc["annotations"][0]["bbox"][0] += 1
    path.write_text(json.dumps(doc))
    assert _version(coco_dir) != before


def test_dataset_version_ignores_where_the_dataset_lives(coco_dir: Path, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "elsewhere"
    shutil.copytree(coco_dir, moved)
    assert _version(moved) == _version(coco_dir)


def test_split_is_deterministic_and_recorded(coco_dir: Path) -> None:
    ds = load_datasets([coco_dir], LABELS, val_fraction=0.25)
    manifest = dataset_manifest(ds)
    assert manifest["num_val"] == 4
    assert sum(1 for r in manifest["images"] if r["split"] == "val") == 4
    again = load_datasets([coco_dir], LABELS, val_fraction=0.25)
    assert (again.train, again.val) == (ds.train, ds.val)


def test_site_filter_keeps_only_that_site(coco_dir: Path) -> None:
    from defectloop.common.errors import InvalidInputError

    assert len(load_datasets([coco_dir], LABELS, site="A", val_fraction=0.2).samples) == 16
    with pytest.raises(InvalidInputError):
        load_datasets([coco_dir], LABELS, site="B", val_fraction=0.2)
