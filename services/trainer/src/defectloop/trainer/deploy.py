"""Deploying a bundle: register it (with its lineage) and publish ``model.deployed``.

Inference follows the compacted ``model.deployed`` topic (keyed site/role) and verifies the
bundle's sha256 before loading it; the registry keeps the deployments and the audit log (who,
when, which version, approved by whom): :meth:`defectloop.trainer.governance.Governance.activate`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from defectloop.common.blobstore import BlobStore, S3BlobStore, open_blob_store
from defectloop.common.errors import ForbiddenError, IntegrityMismatchError, InvalidInputError
from defectloop.common.events import ModelDeployed, ModelRole, sha256_hex
from defectloop.common.kafka import build_broker, publish_events
from defectloop.trainer.registry import (
    DatasetVersion,
    ModelVersion,
    Registry,
    model_version_from_manifest,
)

if TYPE_CHECKING:
    from defectloop.trainer.governance import Publisher


def register_bundle(
    registry: Registry, bundle_dir: Path, *, site: str | None, author: str
) -> ModelVersion:
    """The registry's record of the bundle, created from its manifest if it is not known yet."""
    from defectloop.vision.manifest import load_manifest, verify_bundle

    bundle_dir = bundle_dir.resolve()
    manifest = load_manifest(bundle_dir)
    verify_bundle(bundle_dir)  # refuse a bundle whose model.onnx does not match its manifest
    with registry.session() as s:
        known = s.get(ModelVersion, manifest.version)
    if known is not None:
        if known.sha256 != manifest.sha256:
            raise IntegrityMismatchError(
                f"model version {manifest.version} is registered with another sha256",
                hint="a bundle's version must not be reused for different weights",
            )
        registry.ensure_signed(known)  # registered before bundles were signed: sign it now
        return known
    lineage = manifest.lineage
    registry.upsert_dataset(
        DatasetVersion(
            version=lineage.dataset_version,
            site=site,
            num_images=0,
            num_train=0,
            num_val=0,
            # Trained elsewhere: only the dataset's hash is known, not its manifest.
            manifest_json=json.dumps({"unknown": True, "source": "bundle lineage"}),
        )
    )
    return registry.add_model(
        model_version_from_manifest(manifest, bundle_dir=bundle_dir, site=site, author=author)
    )


def upload_bundle(store: S3BlobStore, bundle_dir: Path) -> str:
    """Copy what inference loads of ``bundle_dir`` (signed manifest, model, signature) to S3
    under a content-addressed prefix ``bundles/<sha256 of the files' digests>/``; return its
    ``s3://`` URI (what ``model.deployed.artifact_uri`` carries in the production profile)."""
    from defectloop.common.signing import SIGNATURE_FILE, SIGNED_FILE
    from defectloop.vision.manifest import MODEL_FILE

    files = {
        name: (bundle_dir / name).read_bytes()
        for name in (SIGNED_FILE, MODEL_FILE, SIGNATURE_FILE)
        if (bundle_dir / name).is_file()  # unsigned: inference refuses it, with its reason
    }
    digest = sha256_hex("".join(f"{n}:{sha256_hex(d)};" for n, d in files.items()).encode())
    uri = ""
    for name, data in files.items():
        uri = store.put_object(f"bundles/{digest}/{name}", data).rsplit("/", 1)[0]
    return uri


def s3_publisher(bootstrap: str, store: S3BlobStore) -> Publisher:
    """Publish deployments whose local bundle is first uploaded to ``store``: the event names
    the ``s3://`` copy, so inference needs no volume shared with the trainer."""

    from defectloop.trainer.governance import kafka_publisher

    def publish(events: Sequence[ModelDeployed]) -> None:
        uploaded = [
            event.model_copy(
                update={"artifact_uri": upload_bundle(store, Path(event.artifact_uri))}
            )
            if Path(event.artifact_uri).is_dir()
            else event
            for event in events
        ]
        kafka_publisher(bootstrap)(uploaded)

    return publish


async def publish_deployment(bootstrap: str, *events: ModelDeployed) -> None:
    broker = build_broker(bootstrap, client_id="defectloop-deploy")
    await broker.start()
    try:
        await publish_events(broker, events)
    finally:
        await broker.stop()


def deploy_bundle(
    bundle_dir: Path,
    *,
    site: str,
    role: ModelRole,
    registry: Registry,
    bootstrap: str,
    requested_by: str,
    reason: str = "manual deploy",
    approved_by: str | None = None,
    training_data: Sequence[Path] = (),
    blobs: BlobStore | None = None,
) -> ModelDeployed:
    """Register ``bundle_dir`` and make it ``role`` at ``site`` (published, recorded, audited).

    A shadow or challenger has no approver. A champion needs ``approved_by``, someone other than
    the model's author, except the first model of a site (nothing to replace: recorded as
    approved by ``policy:first-model``) and a re-deployment of the current champion. A version
    whose gates failed is refused. ``training_data``: the dataset dirs the model was trained
    on, verified against its lineage and kept in the blob store (``blobs``, default: the
    stack's) for retrains to replay.
    """
    from defectloop.trainer.governance import FIRST_MODEL_APPROVER, Governance, PromotionPolicy
    from defectloop.trainer.settings import TrainerSettings

    if not (bundle_dir / "model.onnx").is_file():
        raise InvalidInputError(
            f"no model bundle at {bundle_dir}",
            hint="a bundle is a directory with model.onnx and model.json",
        )
    model = register_bundle(registry, bundle_dir, site=site, author=requested_by)
    store = blobs if blobs is not None else open_blob_store(TrainerSettings().blob_url)
    if training_data:
        from defectloop.trainer.training_data import store_training_data

        store_training_data(registry, model, training_data, store)
    # An S3 blob store (the production profile): the bundle is served from S3 too.
    publish = s3_publisher(bootstrap, store) if isinstance(store, S3BlobStore) else None
    governance = Governance(
        registry,
        publish=publish,
        bootstrap=bootstrap,
        policy=PromotionPolicy(require_gates=False),
    )
    governance.check_gate(model, site)
    if role is not ModelRole.CHAMPION:
        approved_by = None
    elif approved_by is None:
        current = governance.champion(site)
        if current is None:
            approved_by = FIRST_MODEL_APPROVER
        elif current.model_version == model.version:
            approved_by = current.approver
        else:
            raise ForbiddenError(
                f"site {site} has a champion ({current.model_version}): replacing it needs an "
                "approver who is not the model's author",
                reason="approval_required",
                hint=f"deploy it with --role shadow, then `defectloop models approve "
                f"{model.version} --as USER` and `defectloop models promote {model.version}`",
            )
    if approved_by is not None and approved_by == model.author:
        raise ForbiddenError(
            f"{approved_by} is the author of model {model.version} and cannot approve it",
            reason="approval_by_author",
            hint="ask someone else to approve it",
        )
    return governance.activate(
        model, site, role, by=requested_by, approved_by=approved_by, reason=reason
    )
