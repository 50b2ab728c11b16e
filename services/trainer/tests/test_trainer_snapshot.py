"""Dataset snapshots: fresh + balanced replay, frozen eval sets, content-addressed, rebuildable."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.db import make_engine
from defectloop.common.errors import IntegrityMismatchError, InvalidInputError
from defectloop.trainer.data import load_datasets
from defectloop.trainer.jobs import JobStore, LabelledImage
from defectloop.trainer.snapshot import (
    build_manifest,
    load_manifest,
    materialise,
    replay_count,
    replay_sample,
    store_manifest,
)

pytestmark = pytest.mark.unit

LABELS = ("scratch", "spot", "crack")
CHANGE = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> tuple[JobStore, LocalBlobStore]:
    """Site B before and after its change point, and sites A and C (earlier data)."""
    tmp_path = tmp_path_factory.mktemp("world")
    blobs = LocalBlobStore(tmp_path / "blobs")
    store = JobStore(make_engine(f"sqlite:///{tmp_path / 'trainer.db'}", create_tables=False))
    batches = [
        sim_labelled(blobs, "B", 40, CHANGE + timedelta(minutes=1), seed=1, profile="B"),
        sim_labelled(blobs, "B", 20, CHANGE - timedelta(hours=1), seed=2, profile="B"),
        sim_labelled(blobs, "A", 30, CHANGE - timedelta(hours=2), seed=3, profile="A"),
        sim_labelled(blobs, "C", 30, CHANGE - timedelta(hours=2), seed=4, profile="C"),
    ]
    for batch in batches:
        for captured, label in batch:
            store.record_image(captured)
            store.record_annotation(label)
    return store, blobs


def _manifest(store: JobStore, **kw: Any) -> Any:
    labelled = store.labelled_images()
    args: dict[str, Any] = {
        "site_id": "B",
        "job_id": "job-1",
        "change_point_at": CHANGE,
        "labelled": labelled,
        "eval_ids": store.eval_assignment(labelled, 0.2),
        "labels": LABELS,
        "replay_share": 0.5,
        "seed": 0,
    }
    return build_manifest(**{**args, **kw})


def _image(site: str, i: int, label: str | None) -> LabelledImage:
    boxes = ({"label": label, "x": 1.0, "y": 1.0, "w": 4.0, "h": 4.0},) if label else ()
    return LabelledImage(
        image_id=f"{site}-{i}",
        site_id=site,
        sha256="0" * 64,
        blob_uri="file:///x",
        width=8,
        height=8,
        captured_at=CHANGE,
        annotation_id=f"a-{site}-{i}",
        boxes=boxes,
    )


def test_replay_is_balanced_across_sites_and_classes() -> None:
    pool = [
        *(_image("A", i, None) for i in range(100)),  # A is mostly defect-free
        *(_image("A", 100 + i, "spot") for i in range(5)),
        *(_image("C", i, "crack") for i in range(50)),
    ]
    picked = replay_sample(pool, 12, seed=0)
    groups = Counter((i.site_id, i.boxes[0]["label"] if i.boxes else "none") for i in picked)
    assert groups == {("A", "none"): 4, ("A", "spot"): 4, ("C", "crack"): 4}
    # A small group is exhausted, the rest fill up: still n images, no duplicates.
    many = replay_sample(pool, 30, seed=0)
    assert len(many) == 30
    assert len({i.image_id for i in many}) == 30
    assert sum(1 for i in many if i.boxes and i.boxes[0]["label"] == "spot") == 5
    assert replay_sample(pool, 12, seed=0) == picked  # seeded: the same draw
    assert replay_sample(pool, 12, seed=1) != picked


def test_replay_share_sets_the_mix() -> None:
    assert replay_count(40, 0.5) == 40
    assert replay_count(40, 0.25) == 13
    assert replay_count(40, 0.0) == 0


def test_the_manifest_mixes_fresh_and_replay_and_keeps_eval_apart(
    world: tuple[JobStore, LocalBlobStore],
) -> None:
    store, _ = world
    manifest = _manifest(store)
    train = [i for i in manifest.items if i.split == "train"]
    fresh = [i for i in train if i.origin == "fresh"]
    replay = [i for i in train if i.origin == "replay"]
    assert fresh
    assert all(i.site_id == "B" for i in fresh)
    assert len(replay) == len(fresh)  # 50 % replay by default
    assert {i.site_id for i in replay} == {"A", "B", "C"}  # B's pre-change data is replay too
    evals = {i.image_id for i in manifest.items if i.split == "eval"}
    assert evals
    assert not evals & {i.image_id for i in train}
    assert {i.site_id for i in manifest.items if i.split == "eval"} == {"A", "B", "C"}
    counts = manifest.counts()
    assert counts == {
        "train_fresh": len(fresh),
        "train_replay": len(replay),
        "eval": len(evals),
        "excluded": 0,
    }


def test_eval_images_stay_out_of_training_in_every_later_snapshot(
    world: tuple[JobStore, LocalBlobStore],
) -> None:
    store, _ = world
    first = _manifest(store)
    later = _manifest(store, replay_share=0.25, seed=7, job_id="job-2")
    eval_first = {i.image_id for i in first.items if i.split == "eval"}
    eval_later = {i.image_id for i in later.items if i.split == "eval"}
    assert eval_first == eval_later
    assert not eval_first & {i.image_id for i in later.items if i.split == "train"}


def test_no_fresh_labels_is_a_clear_error(world: tuple[JobStore, LocalBlobStore]) -> None:
    store, _ = world
    with pytest.raises(InvalidInputError) as err:
        _manifest(store, change_point_at=CHANGE + timedelta(days=1))
    assert err.value.reason == "no_fresh_labels"


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_a_snapshot_is_rebuilt_byte_identical_from_its_digest_alone(
    world: tuple[JobStore, LocalBlobStore], tmp_path: Path
) -> None:
    store, blobs = world
    manifest = _manifest(store)
    digest = store_manifest(manifest, blobs)
    assert digest == hashlib.sha256(manifest.canonical_json()).hexdigest()
    # Only the digest and the blob store: a fresh store object over the same root.
    reopened = LocalBlobStore(blobs.root)
    first = materialise(load_manifest(reopened, digest), reopened, tmp_path / "one")
    materialise(load_manifest(reopened, digest), reopened, tmp_path / "two")
    assert sorted(first) == ["eval/A", "eval/B", "eval/C", "train"]
    one, two = _files(tmp_path / "one"), _files(tmp_path / "two")
    assert one == two
    assert len(one) == len(manifest.items) + 4
    # And the files are the manifest's images, byte for byte.
    for item in manifest.items:
        where = "train" if item.split == "train" else f"eval/{item.site_id}"
        png = one[f"{where}/images/{item.image_id}.png"]
        assert hashlib.sha256(png).hexdigest() == item.sha256


def test_a_corrupted_manifest_blob_is_refused(
    world: tuple[JobStore, LocalBlobStore],
) -> None:
    store, blobs = world
    # A manifest of its own (another seed): the shared ones stay intact for the other tests.
    digest = store_manifest(_manifest(store, seed=99), blobs)
    path = Path(blobs.uri_for(digest, suffix=".json").removeprefix("file://"))
    path.write_bytes(path.read_bytes().replace(b'"B"', b'"X"', 1))
    with pytest.raises(IntegrityMismatchError):
        load_manifest(blobs, digest)


def test_the_training_dir_is_the_coco_layout_the_trainer_reads(
    world: tuple[JobStore, LocalBlobStore], tmp_path: Path
) -> None:
    store, blobs = world
    manifest = _manifest(store)
    dirs = materialise(manifest, blobs, tmp_path / "ds")
    # Filtered by the retrained site, as a retraining run is: the replayed sites stay in.
    ds = load_datasets([dirs["train"]], LABELS, site="B", val_fraction=0.2)
    train_items = [i for i in manifest.items if i.split == "train"]
    assert len(ds.samples) == len(train_items)
    assert {s.sha256 for s in ds.samples} == {i.sha256 for i in train_items}
    n_boxes = sum(len(i.boxes) for i in train_items)
    assert sum(len(s.boxes) for s in ds.samples) == n_boxes > 0
    doc = json.loads((dirs["train"] / "annotations.json").read_text())
    assert {img["source_site"] for img in doc["images"]} == {"A", "B", "C"}


def test_a_label_of_an_unknown_class_is_left_out_and_listed() -> None:
    labelled = [_image("B", i, "scratch") for i in range(6)] + [_image("B", 6, "dent")]
    manifest = build_manifest(
        site_id="B",
        job_id="job-1",
        change_point_at=CHANGE,
        labelled=labelled,
        eval_ids=set(),
        labels=LABELS,
        replay_share=0.5,
        seed=0,
    )
    assert manifest.excluded_annotations == ("a-B-6",)
    assert "B-6" not in {i.image_id for i in manifest.items}
    assert manifest.counts()["train_fresh"] == 6
