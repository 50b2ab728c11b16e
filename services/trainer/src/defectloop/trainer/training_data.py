"""A model version's training data, kept in the blob store so that a retrain can replay it.

A fine-tune on a few dozen fresh labels forgets what the champion knew (site B's candidate in
the demo lost recall on B's normal parts and on the other sites; docs/demo.md). Rehearsal on the
champion's own training data is the usual cure, so a retrain's replay pool holds, besides the
earlier labels the trainer has seen, the images its champion was trained on:

- a retrained version: the ``train`` items of its job's snapshot (already in the blob store);
- a version trained elsewhere (a bootstrap model, ``defectloop models deploy --training-data``):
  its dataset dirs are verified against the dataset version in its lineage (same images, same
  boxes, same split), stored image by image in the blob store, and listed in a snapshot manifest
  whose digest the registry keeps (:class:`defectloop.trainer.registry.DatasetSnapshot`).

Either way the replayed images are named in the retrain's own manifest, so its dataset is still
rebuilt from the blob store alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import IntegrityMismatchError, InvalidInputError, NotFoundError
from defectloop.common.logging import get_logger
from defectloop.trainer.jobs import LabelledImage
from defectloop.trainer.registry import ModelVersion, Registry
from defectloop.trainer.snapshot import (
    ManifestBox,
    ManifestItem,
    SnapshotManifest,
    load_manifest,
    store_manifest,
)

log = get_logger(__name__)

# Imported data predates every change point: it is never counted as fresh.
IMPORTED_AT = datetime(1970, 1, 1, tzinfo=UTC)
IMPORT_JOB_PREFIX = "import:"


def store_training_data(
    registry: Registry, model: ModelVersion, dirs: Sequence[Path], blobs: BlobStore
) -> str:
    """Verify ``dirs`` are the data ``model`` was trained on, store them, return the digest.

    Idempotent: a dataset version already stored is verified, not stored again.
    """
    from defectloop.trainer.config import validate_config
    from defectloop.trainer.lineage import verified_dataset
    from defectloop.vision.manifest import load_manifest as load_bundle_manifest

    lineage = load_bundle_manifest(Path(model.bundle_path)).lineage
    cfg = validate_config(lineage.config, source=f"lineage of {model.version}")
    missing = [str(d) for d in dirs if not Path(d).is_dir()]
    if missing:
        raise InvalidInputError(
            f"training data dir(s) not found: {', '.join(missing)}",
            hint="give the COCO dataset dirs the model was trained on",
        )
    ds = verified_dataset(
        dirs,
        cfg.labels,
        site=model.site,
        val_fraction=cfg.train.val_fraction,
        expected=model.dataset_version,
        what=f"these dirs are not the training data of {model.version}",
        reason="dataset_mismatch",
        hint="give exactly the dataset dirs (and site) the model was trained on",
    )
    known = registry.dataset_snapshot(model.dataset_version)
    if known is not None:
        return known
    items = []
    for sample in ds.samples:
        data = sample.path.read_bytes()
        uri = blobs.put(data, suffix=sample.path.suffix)
        boxes = tuple(
            ManifestBox(
                label=cfg.labels[int(c)], x=float(b[0]), y=float(b[1]), w=float(b[2]), h=float(b[3])
            )
            for b, c in zip(sample.boxes, sample.labels, strict=True)
        )
        items.append(
            ManifestItem(
                image_id=f"{sample.sha256[:24]}",
                site_id=sample.site or model.site or "",
                sha256=sample.sha256,
                blob_uri=uri,
                width=sample.width,
                height=sample.height,
                annotation_id=f"{model.dataset_version[:12]}:{sample.file_name}",
                boxes=boxes,
                split="train",
                origin="fresh",
            )
        )
    unique = {item.image_id: item for item in items}  # the same image twice is one image
    manifest = SnapshotManifest(
        site_id=model.site or "",
        job_id=f"{IMPORT_JOB_PREFIX}{model.dataset_version}",
        change_point_at=IMPORTED_AT,
        labels=tuple(cfg.labels),
        replay_share=0.0,
        seed=lineage.seed,
        items=tuple(sorted(unique.values(), key=lambda i: (i.site_id, i.image_id))),
    )
    digest = store_manifest(manifest, blobs)
    registry.set_dataset_snapshot(model.dataset_version, digest)
    log.info(
        "training_data_stored",
        model_version=model.version,
        dataset_version=model.dataset_version,
        snapshot=digest,
        images=len(unique),
    )
    return digest


def training_snapshot(registry: Registry, model: ModelVersion) -> str | None:
    """The digest of the snapshot ``model`` was trained on, if the blob store has it."""
    if model.training_run_id is not None:
        provenance = registry.run_provenance(model.training_run_id)
        if provenance is not None and provenance.snapshot_sha256 is not None:
            return provenance.snapshot_sha256
    return registry.dataset_snapshot(model.dataset_version)


def earlier_training_images(
    registry: Registry, version: str, blobs: BlobStore
) -> list[LabelledImage]:
    """What ``version`` was trained on, as replayable labelled images (empty if not stored)."""
    try:
        model = registry.get_model(version)
    except NotFoundError:
        return []
    digest = training_snapshot(registry, model)
    if digest is None:
        return []
    try:
        manifest = load_manifest(blobs, digest)
    except (NotFoundError, IntegrityMismatchError) as exc:
        # Replay is an improvement, not a precondition: train on what there is, say why.
        log.warning(
            "training_data_unavailable", model_version=version, snapshot=digest, error=str(exc)
        )
        return []
    return [
        LabelledImage(
            image_id=item.image_id,
            site_id=item.site_id,
            sha256=item.sha256,
            blob_uri=item.blob_uri,
            width=item.width,
            height=item.height,
            captured_at=IMPORTED_AT,
            annotation_id=item.annotation_id,
            boxes=tuple(box.model_dump() for box in item.boxes),
        )
        for item in manifest.items
        if item.split == "train"
    ]
