"""A versioned dataset snapshot: fresh site labels + balanced replay + frozen per-site eval sets.

The manifest lists, for each image, its sha256, blob URI, size, site, the annotation id and boxes
that label it, its split (``train`` or ``eval``) and origin (``fresh`` or ``replay``). Its identity
is the sha256 of its canonical JSON, and it is stored in the blob store under that digest, next
to the images it names (themselves stored under their sha256 by ingest). So a dataset is rebuilt
from the blob store alone, byte for byte, from the manifest digest:
``materialise(load_manifest(store, digest), store, out)``.

Replay (closed-loop R9): a share of the training set is earlier data (other sites, or the site
before its change point), drawn round-robin over (site, class) groups so every site and every
defect class is represented, each group in a seeded order. Eval images (frozen per site, see
:meth:`JobStore.eval_assignment`) go into the manifest's ``eval`` split and are never written
into the training directory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import IntegrityMismatchError, InvalidInputError
from defectloop.common.events import sha256_hex
from defectloop.trainer.jobs import LabelledImage

MANIFEST_SUFFIX = ".json"
TRAIN_DIR = "train"
EVAL_DIR = "eval"
NO_DEFECT = "none"


class ManifestBox(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str
    x: float
    y: float
    w: float
    h: float


class ManifestItem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    image_id: str
    site_id: str
    sha256: str
    blob_uri: str
    width: int
    height: int
    annotation_id: str
    boxes: tuple[ManifestBox, ...]
    split: Literal["train", "eval"]
    origin: Literal["fresh", "replay"]


class SnapshotManifest(BaseModel):
    """What a training run is made of; its canonical JSON is what gets hashed and stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    site_id: str = Field(description="The site being retrained.")
    job_id: str
    change_point_at: datetime
    labels: tuple[str, ...] = Field(description="Class names, in category id order.")
    replay_share: float
    seed: int
    items: tuple[ManifestItem, ...]
    excluded_annotations: tuple[str, ...] = Field(
        (), description="Labels naming a class the model does not have: left out, listed here."
    )

    def canonical_json(self) -> bytes:
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()

    def sha256(self) -> str:
        return sha256_hex(self.canonical_json())

    def counts(self) -> dict[str, int]:
        """Fresh/replay/eval sizes: what ``models why`` prints about a dataset."""
        train = [i for i in self.items if i.split == "train"]
        return {
            "train_fresh": sum(1 for i in train if i.origin == "fresh"),
            "train_replay": sum(1 for i in train if i.origin == "replay"),
            "eval": sum(1 for i in self.items if i.split == "eval"),
            "excluded": len(self.excluded_annotations),
        }


def _primary_class(image: LabelledImage) -> str:
    labels = sorted(str(b["label"]) for b in image.boxes)
    return labels[0] if labels else NO_DEFECT


def _seeded_order(images: Iterable[LabelledImage], seed: int) -> list[LabelledImage]:
    # A hash of (seed, image id): stable across processes and Python versions, unlike random.
    return sorted(
        images, key=lambda i: hashlib.sha256(f"{seed}\x1f{i.image_id}".encode()).hexdigest()
    )


def replay_sample(pool: Sequence[LabelledImage], n: int, *, seed: int) -> list[LabelledImage]:
    """``n`` images of ``pool`` balanced across (site, class) groups, round-robin."""
    groups: dict[tuple[str, str], list[LabelledImage]] = {}
    for image in pool:
        groups.setdefault((image.site_id, _primary_class(image)), []).append(image)
    ordered = [_seeded_order(groups[key], seed) for key in sorted(groups)]
    picked: list[LabelledImage] = []
    for row in zip_longest(*ordered):
        for image in row:
            if image is not None and len(picked) < n:
                picked.append(image)
    return picked


def replay_count(n_fresh_train: int, replay_share: float) -> int:
    """Replay images so that they make ``replay_share`` of the training set."""
    return round(n_fresh_train * replay_share / (1.0 - replay_share))


def build_manifest(
    *,
    site_id: str,
    job_id: str,
    change_point_at: datetime,
    labelled: Sequence[LabelledImage],
    eval_ids: set[str],
    labels: Sequence[str],
    replay_share: float,
    seed: int,
    earlier: Sequence[LabelledImage] = (),
    earlier_share: float = 0.0,
) -> SnapshotManifest:
    """Fresh = the site's images captured since the change point; the rest is the replay pool.

    Every eval-assigned image of every site goes into the ``eval`` split (frozen sets the gates
    score champion and candidate on); only non-eval images are ever trained on. A label naming a
    class the model does not have is left out (and listed), not allowed to fail the whole run.
    ``earlier``: more replay candidates that are never fresh nor eval (the champion's own
    training data, :mod:`defectloop.trainer.training_data`); an image also labelled here counts
    once, with the label given here. ``earlier_share`` of the replay is drawn from them (as far
    as they go), the rest from the other earlier labels (as far as they go, then ``earlier``).
    """
    known = set(labels)
    excluded = sorted(
        i.annotation_id for i in labelled if any(str(b["label"]) not in known for b in i.boxes)
    )
    left_out = set(excluded)
    fresh_train, pool, evals = [], [], []
    for image in labelled:
        if image.annotation_id in left_out:
            continue
        fresh = image.site_id == site_id and image.captured_at >= change_point_at
        if image.image_id in eval_ids:
            evals.append((image, fresh))
        elif fresh:
            fresh_train.append(image)
        else:
            pool.append(image)
    seen = {i.image_id for i in labelled} | {i.sha256 for i in labelled}
    champion_data = [
        i
        for i in earlier
        if i.image_id not in seen
        and i.sha256 not in seen
        and all(str(b["label"]) in known for b in i.boxes)  # an older label set: skip the image
    ]
    if not fresh_train:
        raise InvalidInputError(
            f"no fresh training image of site {site_id} since {change_point_at.isoformat()}",
            reason="no_fresh_labels",
        )
    n_replay = replay_count(len(fresh_train), replay_share)
    n_champion = min(len(champion_data), round(n_replay * earlier_share))
    others = replay_sample(pool, n_replay - n_champion, seed=seed)
    n_champion = min(len(champion_data), n_replay - len(others))  # fill what the pool lacks
    replay = [*others, *replay_sample(champion_data, n_champion, seed=seed)]
    items = [
        *(_item(i, "train", "fresh") for i in fresh_train),
        *(_item(i, "train", "replay") for i in replay),
        *(_item(i, "eval", "fresh" if fresh else "replay") for i, fresh in evals),
    ]
    items.sort(key=lambda it: (it.split, it.site_id, it.image_id))
    return SnapshotManifest(
        site_id=site_id,
        job_id=job_id,
        change_point_at=change_point_at,
        labels=tuple(labels),
        replay_share=replay_share,
        seed=seed,
        items=tuple(items),
        excluded_annotations=tuple(excluded),
    )


def _item(
    image: LabelledImage, split: Literal["train", "eval"], origin: Literal["fresh", "replay"]
) -> ManifestItem:
    return ManifestItem(
        image_id=image.image_id,
        site_id=image.site_id,
        sha256=image.sha256,
        blob_uri=image.blob_uri,
        width=image.width,
        height=image.height,
        annotation_id=image.annotation_id,
        boxes=tuple(ManifestBox.model_validate(b) for b in image.boxes),
        split=split,
        origin=origin,
    )


def store_manifest(manifest: SnapshotManifest, store: BlobStore) -> str:
    """Put the manifest in the blob store; return its digest (the dataset snapshot's id)."""
    store.put(manifest.canonical_json(), suffix=MANIFEST_SUFFIX)
    return manifest.sha256()


def load_manifest(store: BlobStore, digest: str) -> SnapshotManifest:
    """The manifest with this digest, verified by the store against the digest."""
    data = store.get(store.uri_for(digest, suffix=MANIFEST_SUFFIX))
    return SnapshotManifest.model_validate_json(data)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _coco(items: Sequence[ManifestItem], labels: Sequence[str]) -> dict[str, Any]:
    category = {name: i + 1 for i, name in enumerate(labels)}
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, item in enumerate(items, start=1):
        images.append(
            {
                "id": index,
                "file_name": f"{item.image_id}.png",
                "width": item.width,
                "height": item.height,
                # Not the loader's "site" key: it would drop the replayed other sites' images
                # when training filters by the retrained site.
                "source_site": item.site_id,
                "image_id": item.image_id,
                "annotation_id": item.annotation_id,
                "sha256": item.sha256,
            }
        )
        for box in item.boxes:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": index,
                    "category_id": category[box.label],
                    "bbox": [box.x, box.y, box.w, box.h],
                    "area": box.w * box.h,
                    "iscrowd": 0,
                }
            )
    return {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": name} for name, i in category.items()],
    }


def _materialise_dir(
    items: Sequence[ManifestItem], labels: Sequence[str], store: BlobStore, out: Path
) -> None:
    for item in items:
        data = store.get(item.blob_uri)
        if sha256_hex(data) != item.sha256:
            raise IntegrityMismatchError(
                f"blob {item.blob_uri} is not image {item.sha256}", reason="blob_corrupt"
            )
        _write(out / "images" / f"{item.image_id}.png", data)
    doc = _coco(items, labels)
    _write(
        out / "annotations.json", json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    )


def materialise(manifest: SnapshotManifest, store: BlobStore, out_dir: Path) -> dict[str, Path]:
    """Write the COCO dirs the trainer reads: ``train/`` and ``eval/<site>/`` for each site.

    Returns ``{"train": dir, "eval/<site>": dir, ...}``. Same manifest, same bytes.
    """
    dirs: dict[str, Path] = {}
    train = [i for i in manifest.items if i.split == "train"]
    _materialise_dir(train, manifest.labels, store, out_dir / TRAIN_DIR)
    dirs[TRAIN_DIR] = out_dir / TRAIN_DIR
    for site in sorted({i.site_id for i in manifest.items if i.split == "eval"}):
        items = [i for i in manifest.items if i.split == "eval" and i.site_id == site]
        _materialise_dir(items, manifest.labels, store, out_dir / EVAL_DIR / site)
        dirs[f"{EVAL_DIR}/{site}"] = out_dir / EVAL_DIR / site
    return dirs
