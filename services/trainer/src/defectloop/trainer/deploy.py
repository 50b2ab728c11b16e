"""Deploying a bundle: register it (with its lineage) and publish ``model.deployed``.

Inference follows the compacted ``model.deployed`` topic (keyed site/role) and verifies the
bundle's sha256 before loading it; the registry keeps the audit trail (who, when, which version).
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from defectloop.common.errors import IntegrityMismatchError, InvalidInputError
from defectloop.common.events import ModelDeployed, ModelRole
from defectloop.common.kafka import build_broker, publish_event
from defectloop.trainer.registry import (
    DatasetVersion,
    Deployment,
    ModelVersion,
    Registry,
    model_version_from_manifest,
)


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


async def publish_deployment(bootstrap: str, event: ModelDeployed) -> None:
    broker = build_broker(bootstrap, client_id="defectloop-deploy")
    await broker.start()
    try:
        await publish_event(broker, event)
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
) -> ModelDeployed:
    """Register ``bundle_dir``, record the deployment, publish ``model.deployed`` (acknowledged)."""
    if not (bundle_dir / "model.onnx").is_file():
        raise InvalidInputError(
            f"no model bundle at {bundle_dir}",
            hint="a bundle is a directory with model.onnx and model.json",
        )
    model = register_bundle(registry, bundle_dir, site=site, author=requested_by)
    now = datetime.now(UTC)
    event = ModelDeployed(
        site_id=site,
        role=role,
        model_name=model.name,
        model_version=model.version,
        artifact_uri=str(Path(model.bundle_path).resolve()),
        sha256=model.sha256,
        baseline_metrics={k: float(v) for k, v in model.metrics.items()},
        approved_by=requested_by,
    )
    asyncio.run(publish_deployment(bootstrap, event))
    registry.add_deployment(
        Deployment(
            site=site,
            role=role.value,
            model_version=model.version,
            status="active",
            requested_by=requested_by,
            approver=requested_by,
            reason=reason,
            requested_at=now,
            approved_at=now,
            activated_at=datetime.now(UTC),
        )
    )
    return event
