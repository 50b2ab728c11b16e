"""Signed models on the real broker: inference loads only bundles the trainer signed.

Real parts: the Kafka broker, the trainer's registry (SQLite) and ``deploy_bundle`` (which signs
at registration), the inference app in this process, tiny ONNX bundles and real PNG blobs. An
attacker who can write ``model.deployed`` (or the bundle directory) deploys, one after the other,
an unsigned bundle, a registered bundle whose manifest was edited after signing (its decoding
threshold; its sha256 still matches the weights, so the sha256 check alone would accept it) and a
bundle signed by another key. Each is refused with its reason, and the registered model keeps
deciding.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from sqlmodel import select

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.errors import IntegrityMismatchError
from defectloop.common.events import (
    ImageCaptured,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    image_id_for,
    sha256_hex,
)
from defectloop.common.kafka import publish_event
from defectloop.common.signing import (
    TrustedKeys,
    load_public_key,
    project_key,
    public_key_path,
    sign_bundle,
    verify_signed_file,
)
from defectloop.inference.bundles import SignaturePolicy, load_deployed
from defectloop.inference.main import build_app
from defectloop.inference.router import ModelRouter
from defectloop.inference.settings import InferenceSettings
from defectloop.testing.bundles import BundleBuilder, TinyBundle
from defectloop.testing.kafka import collect, started_broker
from defectloop.trainer.audit import AuditRecord
from defectloop.trainer.deploy import deploy_bundle, register_bundle
from defectloop.trainer.registry import DatasetVersion, Registry, model_version_from_manifest
from defectloop.vision.manifest import load_manifest

pytestmark = pytest.mark.integration

CHAMPION = ModelRole.CHAMPION
TIMEOUT_S = 90.0


@pytest.fixture
def signing_key(tmp_path: Path) -> Path:
    """The project key of this test (created by the registry on first use)."""
    return tmp_path / "keys" / "ed25519.pem"


@pytest.fixture
def registry(tmp_path: Path, signing_key: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'trainer.db'}", signing_key=signing_key)
    yield reg
    reg.dispose()


@asynccontextmanager
async def running_inference(settings: InferenceSettings) -> AsyncIterator[FastAPI]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        await asyncio.wait_for(app.state.router.ready.wait(), TIMEOUT_S)
        yield app


def png_image(store: LocalBlobStore, site: str, seed: int) -> ImageCaptured:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64), np.uint8)
    ok, buf = cv2.imencode(".png", pixels)
    assert ok
    body = bytes(buf)
    digest = sha256_hex(body)
    return ImageCaptured(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id_for(site, "cam-1", digest),
        sha256=digest,
        blob_uri=store.put(body, suffix=".png"),
        captured_at=datetime.now(UTC),
        width=64,
        height=48,
        quality=QualityMetrics(sharpness=10.0, brightness=100.0, contrast=20.0, uniform=False),
    )


def rejected_is(site: str, version: str) -> Callable[[ModelRouter], bool]:
    return lambda router: router.rejected_version(site, CHAMPION) == version


def rejection(router: ModelRouter, site: str) -> dict[str, Any] | None:
    rows = [r for r in router.describe()["models"] if r["site_id"] == site]
    return rows[0]["last_rejected"] if rows else None


def lower_threshold_after_signing(bundle: TinyBundle) -> None:
    """Edit the signed manifest: every image would be called defective. The weights (and so the
    sha256 the manifest and model.deployed name) are unchanged."""
    path = bundle.path / "model.json"
    manifest = json.loads(path.read_text())
    manifest["decoding"].update(score_threshold=0.01, decision_threshold=0.01)
    path.write_text(json.dumps(manifest, indent=2))


async def test_inference_refuses_unsigned_edited_and_foreign_signed_bundles_and_keeps_serving(
    kafka_bootstrap: str,
    tmp_path: Path,
    unique_group: str,
    registry: Registry,
    signing_key: Path,
) -> None:
    site = "sig" + uuid.uuid4().hex[:10]
    store = LocalBlobStore(tmp_path / "blobs")
    build = BundleBuilder(tmp_path)
    registered = build("v1", signed=False)  # the trainer signs it when it registers it
    unsigned = build("v2", signed=False)
    edited = build("v3", signed=False)
    foreign = build("v4", signed=False)
    sign_bundle(foreign.path, Ed25519PrivateKey.generate())
    settings = InferenceSettings(
        kafka_bootstrap=kafka_bootstrap,
        blob_url=store.root.as_uri(),
        group_id=unique_group,
        providers="cpu",
        intra_op_threads=1,
        decode_workers=2,
        signing_public_key=public_key_path(signing_key),
    )

    async with (
        collect(
            kafka_bootstrap, topics.PREDICTION_MADE, where=lambda e: e.site_id == site
        ) as predictions,
        started_broker(kafka_bootstrap, "security-signing-test") as producer,
        running_inference(settings) as app,
    ):
        router: ModelRouter = app.state.router
        await asyncio.to_thread(
            deploy_bundle,
            registered.path,
            site=site,
            role=CHAMPION,
            registry=registry,
            bootstrap=kafka_bootstrap,
            requested_by="alice",
        )
        await asyncio.wait_for(
            router.wait_for(lambda r: r.serving_version(site, CHAMPION) == "v1"), TIMEOUT_S
        )
        # Registered (so signed), then edited on disk.
        await asyncio.to_thread(register_bundle, registry, edited.path, site=site, author="alice")
        lower_threshold_after_signing(edited)

        reasons = {}
        for bundle in (unsigned, edited, foreign):
            await publish_event(producer, bundle.deployed(site))
            await asyncio.wait_for(router.wait_for(rejected_is(site, bundle.version)), TIMEOUT_S)
            rejected = rejection(router, site)
            assert rejected is not None
            reasons[bundle.version] = rejected["reason"]
            assert router.serving_version(site, CHAMPION) == "v1"

        image = png_image(store, site, seed=1)
        await publish_event(producer, image)
        decided: list[PredictionMade] = await predictions.wait_for(
            lambda items: any(p.image_id == image.image_id for p in items), TIMEOUT_S
        )

    assert reasons == {
        "v2": "bundle_unsigned",
        "v3": "signature_invalid",
        "v4": "signing_key_untrusted",
    }
    assert [(p.image_id, p.model_version) for p in decided] == [(image.image_id, "v1")]


def test_registration_signs_the_bundle_and_audits_the_key(
    tmp_path: Path, registry: Registry, signing_key: Path
) -> None:
    bundle = BundleBuilder(tmp_path)("v1", signed=False)
    model = register_bundle(registry, bundle.path, site="s1", author="alice")
    signature = json.loads((bundle.path / "signature.json").read_text())
    with registry.session() as s:
        records = s.exec(select(AuditRecord).where(AuditRecord.model_version == model.version))
        evidence = [r.evidence for r in records]
    assert signing_key.exists()
    assert public_key_path(signing_key).exists()
    assert [e["signing_key_id"] for e in evidence] == [signature["key_id"]]


def test_a_bundle_edited_after_registration_is_not_signed_again_at_deploy(
    tmp_path: Path, registry: Registry
) -> None:
    bundle = BundleBuilder(tmp_path)("v1", signed=False)
    register_bundle(registry, bundle.path, site="s1", author="alice")
    lower_threshold_after_signing(bundle)
    with pytest.raises(IntegrityMismatchError) as refused:
        register_bundle(registry, bundle.path, site="s1", author="alice")
    assert refused.value.reason == "signature_invalid"


def test_a_bundle_registered_before_signing_is_signed_when_deployed(
    tmp_path: Path, registry: Registry, signing_key: Path
) -> None:
    bundle = BundleBuilder(tmp_path)("v1", signed=False)
    away = tmp_path / "away"
    bundle.path.rename(away)  # a record-only registration: no bundle there to sign
    manifest = load_manifest(away)
    registry.upsert_dataset(
        DatasetVersion(
            version=manifest.lineage.dataset_version,
            num_images=0,
            num_train=0,
            num_val=0,
            manifest_json="{}",
        )
    )
    registry.add_model(
        model_version_from_manifest(manifest, bundle_dir=bundle.path, site="s1", author="alice")
    )
    away.rename(bundle.path)
    assert not (bundle.path / "signature.json").exists()
    register_bundle(registry, bundle.path, site="s1", author="alice")
    trusted = TrustedKeys([load_public_key(public_key_path(signing_key))])
    assert verify_signed_file(bundle.path, trusted) == (bundle.path / "model.json").read_bytes()


def test_an_unsigned_bundle_loads_only_when_verification_is_switched_off(
    tmp_path: Path, signing_key: Path
) -> None:
    unsigned = BundleBuilder(tmp_path)("dev-v1", signed=False)
    project_key(signing_key)
    on = SignaturePolicy(public_keys=(public_key_path(signing_key),))
    with pytest.raises(IntegrityMismatchError):
        load_deployed(unsigned.deployed("dev"), signatures=on, providers="cpu")
    off = SignaturePolicy.from_settings(InferenceSettings(verify_signatures=False))
    detector = load_deployed(unsigned.deployed("dev"), signatures=off, providers="cpu")
    assert detector.manifest.version == "dev-v1"
