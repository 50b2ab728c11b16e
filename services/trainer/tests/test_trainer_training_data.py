"""A model's training data kept in the blob store and replayed by its retrains.

One tiny real training (seconds) gives a registered version with a real lineage; its dataset dir
is then stored, verified against that lineage, and read back as replayable labelled images.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.errors import IntegrityMismatchError
from defectloop.trainer.jobs import LabelledImage
from defectloop.trainer.pipeline import TrainOutcome, train_and_register
from defectloop.trainer.registry import Registry
from defectloop.trainer.snapshot import build_manifest, load_manifest, materialise
from defectloop.trainer.training_data import (
    IMPORTED_AT,
    earlier_training_images,
    store_training_data,
    training_snapshot,
)

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("training-data")


@pytest.fixture(scope="module")
def dataset(workspace: Path, coco_factory: Callable[..., Path]) -> Path:
    return coco_factory(workspace / "ds", n=12, size=96, seed=4)


@pytest.fixture(scope="module")
def registry(workspace: Path) -> Registry:
    return Registry(f"sqlite:///{workspace / 'trainer.db'}")


@pytest.fixture(scope="module")
def trained(workspace: Path, dataset: Path, registry: Registry) -> TrainOutcome:
    return train_and_register(
        [dataset],
        preset="tiny",
        seed=2,
        out_dir=workspace / "bundle",
        registry=registry,
        track=False,
    )


def _boxes_by_file(dataset: Path) -> dict[str, list[tuple[str, list[float]]]]:
    coco = json.loads((dataset / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    files = {i["id"]: i["file_name"] for i in coco["images"]}
    out: dict[str, list[tuple[str, list[float]]]] = {f: [] for f in files.values()}
    for a in coco["annotations"]:
        out[files[a["image_id"]]].append((names[a["category_id"]], [float(v) for v in a["bbox"]]))
    return {f: sorted(b) for f, b in out.items()}


def _image(dataset: Path, file_name: str) -> bytes:
    direct = dataset / file_name
    return (direct if direct.is_file() else dataset / "images" / file_name).read_bytes()


def test_stored_training_data_is_replayable_and_rebuilds_byte_for_byte(
    trained: TrainOutcome, dataset: Path, registry: Registry, tmp_path: Path
) -> None:
    model = registry.get_model(trained.model.version)
    blobs = LocalBlobStore(tmp_path / "blobs")
    assert earlier_training_images(registry, model.version, blobs) == []  # nothing stored yet

    digest = store_training_data(registry, model, [dataset], blobs)
    assert training_snapshot(registry, model) == digest
    assert store_training_data(registry, model, [dataset], blobs) == digest  # idempotent

    earlier = earlier_training_images(registry, model.version, blobs)
    truth = _boxes_by_file(dataset)
    assert len(earlier) == len(truth)
    assert all(i.captured_at == IMPORTED_AT for i in earlier)  # never fresh
    by_annotation = {i.annotation_id.split(":", 1)[1]: i for i in earlier}
    for file_name, boxes in truth.items():
        image = by_annotation[file_name]
        got = sorted((b["label"], [b["x"], b["y"], b["w"], b["h"]]) for b in image.boxes)
        assert got == boxes
        assert blobs.get(image.blob_uri) == _image(dataset, file_name)

    # The blob store alone rebuilds it: every image, byte for byte.
    shutil.rmtree(tmp_path / "rebuilt", ignore_errors=True)
    dirs = materialise(load_manifest(blobs, digest), blobs, tmp_path / "rebuilt")
    rebuilt = sorted(p.read_bytes() for p in (dirs["train"] / "images").iterdir())
    assert rebuilt == sorted(_image(dataset, f) for f in truth)


def test_data_that_is_not_the_models_training_data_is_refused(
    trained: TrainOutcome,
    registry: Registry,
    tmp_path: Path,
    coco_factory: Callable[..., Path],
) -> None:
    model = registry.get_model(trained.model.version)
    blobs = LocalBlobStore(tmp_path / "blobs")
    other = coco_factory(tmp_path / "other", n=12, size=96, seed=5)
    before = registry.dataset_snapshot(model.dataset_version)
    with pytest.raises(IntegrityMismatchError, match="not the training data") as info:
        store_training_data(registry, model, [other], blobs)
    assert info.value.reason == "dataset_mismatch"
    assert registry.dataset_snapshot(model.dataset_version) == before
    assert not (tmp_path / "blobs").exists() or not any((tmp_path / "blobs").rglob("*.json"))


def _labelled(image_id: str, site: str, at: datetime, defective: bool) -> LabelledImage:
    boxes = ({"label": "scratch", "x": 1.0, "y": 1.0, "w": 4.0, "h": 4.0},) if defective else ()
    return LabelledImage(
        image_id=image_id,
        site_id=site,
        sha256=f"{image_id:0>64}"[-64:],
        blob_uri=f"file:///{image_id}.png",
        width=64,
        height=64,
        captured_at=at,
        annotation_id=f"ann-{image_id}",
        boxes=boxes,
    )


def test_earlier_images_only_ever_join_the_replay_pool() -> None:
    change = datetime(2026, 12, 1, tzinfo=UTC)
    fresh = [_labelled(f"f{i}", "B", change + timedelta(minutes=i), i % 2 == 0) for i in range(6)]
    earlier = [_labelled(f"e{i}", "B", IMPORTED_AT, i % 2 == 0) for i in range(40)]
    # The same image known both as a live label and as earlier training data counts once.
    earlier.append(fresh[0])
    manifest = build_manifest(
        site_id="B",
        job_id="job",
        change_point_at=change,
        labelled=fresh,
        eval_ids={"f5"},
        labels=["scratch"],
        replay_share=0.5,
        seed=1,
        earlier=earlier,
    )
    counts = manifest.counts()
    assert counts == {"train_fresh": 5, "train_replay": 5, "eval": 1, "excluded": 0}
    replayed = [i for i in manifest.items if i.origin == "replay"]
    assert {i.image_id[0] for i in replayed} == {"e"}
    assert {i.split for i in replayed} == {"train"}
    assert [i.image_id for i in manifest.items].count("f0") == 1


def test_an_earlier_image_with_a_class_the_model_lacks_is_not_replayed() -> None:
    change = datetime(2026, 12, 1, tzinfo=UTC)
    fresh = [_labelled(f"f{i}", "B", change, True) for i in range(4)]
    odd = _labelled("e-odd", "B", IMPORTED_AT, False)
    odd = LabelledImage(
        **{**odd.__dict__, "boxes": ({"label": "dent", "x": 0, "y": 0, "w": 2, "h": 2},)}
    )
    manifest = build_manifest(
        site_id="B",
        job_id="job",
        change_point_at=change,
        labelled=fresh,
        eval_ids=set(),
        labels=["scratch"],
        replay_share=0.5,
        seed=1,
        earlier=[odd, _labelled("e-ok", "B", IMPORTED_AT, True)],
    )
    assert [i.image_id for i in manifest.items if i.origin == "replay"] == ["e-ok"]


def test_the_champions_share_of_the_replay_comes_from_its_training_data() -> None:
    change = datetime(2026, 12, 1, tzinfo=UTC)
    fresh = [_labelled(f"f{i}", "B", change + timedelta(minutes=i), i % 2 == 0) for i in range(10)]
    others = [_labelled(f"o{i}", "A", change - timedelta(days=1), i % 2 == 0) for i in range(20)]
    earlier = [_labelled(f"e{i}", "B", IMPORTED_AT, i % 2 == 0) for i in range(40)]

    def replayed(share: float, pool: list[LabelledImage]) -> list[str]:
        manifest = build_manifest(
            site_id="B",
            job_id="job",
            change_point_at=change,
            labelled=[*fresh, *pool],
            eval_ids=set(),
            labels=["scratch"],
            replay_share=0.5,
            seed=1,
            earlier=earlier,
            earlier_share=share,
        )
        return [i.image_id[0] for i in manifest.items if i.origin == "replay"]

    assert sorted(replayed(0.7, others)) == ["e"] * 7 + ["o"] * 3
    assert sorted(replayed(0.0, others)) == ["o"] * 10
    assert sorted(replayed(0.7, others[:1])) == ["e"] * 9 + ["o"]  # the pool's shortfall
