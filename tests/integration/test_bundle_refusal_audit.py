"""A bundle refused by inference is in the trainer's audit chain (issue 13 item 3).

Real parts: the Kafka broker, the trainer's registry (SQLite) and ``deploy_bundle`` (signing at
registration), the inference app and the trainer app in this process, tiny ONNX bundles, and the
``defectloop`` CLI in a subprocess. A registered bundle is edited on disk after registration (only
inference can see that), then deployed: inference refuses it, the previous champion keeps
deciding, the trainer appends one ``bundle_refused`` record (a redelivery adds none) and
``defectloop audit verify`` still finds the chain intact.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlmodel import col, select

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import ModelRefused, ModelRole
from defectloop.common.kafka import publish_event
from defectloop.common.signing import public_key_path
from defectloop.inference.main import build_app as build_inference
from defectloop.inference.router import ModelRouter
from defectloop.inference.settings import InferenceSettings
from defectloop.testing.bundles import BundleBuilder, TinyBundle
from defectloop.testing.kafka import collect, started_broker
from defectloop.testing.net import free_port, wait_until
from defectloop.trainer.audit import AuditAction, AuditRecord
from defectloop.trainer.deploy import deploy_bundle, register_bundle
from defectloop.trainer.main import build_app as build_trainer
from defectloop.trainer.registry import DB_URL_ENV, Registry
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.integration

CHAMPION = ModelRole.CHAMPION
TIMEOUT_S = 90.0


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = Registry(f"sqlite:///{tmp_path / 'trainer.db'}", signing_key=tmp_path / "keys" / "k.pem")
    yield reg
    reg.dispose()


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


def edit_after_registration(bundle: TinyBundle) -> None:
    """Lower the signed manifest's thresholds (every part would be diverted); the weights, and so
    the sha256 that model.deployed names, are unchanged: only the signature check sees it."""
    path = bundle.path / "model.json"
    manifest = json.loads(path.read_text())
    manifest["decoding"].update(score_threshold=0.01, decision_threshold=0.01)
    path.write_text(json.dumps(manifest, indent=2))


def refusals(registry: Registry, site: str) -> list[AuditRecord]:
    with registry.session() as s:
        return list(
            s.exec(
                select(AuditRecord)
                .where(
                    AuditRecord.site == site,
                    AuditRecord.action == AuditAction.BUNDLE_REFUSED.value,
                )
                .order_by(col(AuditRecord.seq))
            ).all()
        )


def recorded(registry: Registry, site: str, n: int) -> Callable[[], Awaitable[bool]]:
    async def probe() -> bool:
        return len(await asyncio.to_thread(refusals, registry, site)) >= n

    return probe


def cli(*args: str, db_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, DB_URL_ENV: db_url}
    return subprocess.run(
        [sys.executable, "-m", "defectloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_a_bundle_tampered_after_registration_is_refused_and_audited(
    kafka_bootstrap: str, tmp_path: Path, unique_group: str, registry: Registry
) -> None:
    site = "ref" + uuid.uuid4().hex[:10]
    build = BundleBuilder(tmp_path)
    good, tampered, later = build("v1", signed=False), build("v2", signed=False), build("v3")
    inference = build_inference(
        InferenceSettings(
            kafka_bootstrap=kafka_bootstrap,
            blob_url=LocalBlobStore(tmp_path / "blobs").root.as_uri(),
            group_id=unique_group,
            providers="cpu",
            intra_op_threads=1,
            decode_workers=1,
            signing_public_key=public_key_path(tmp_path / "keys" / "k.pem"),
        )
    )
    trainer = build_trainer(
        TrainerSettings(
            kafka_bootstrap=kafka_bootstrap,
            port=free_port(),
            database_url=registry.url,
            blob_url=(tmp_path / "blobs").as_uri(),
            work_dir=tmp_path / "work",
            only_sites=[site],
        ),
        group_id=f"trainer-{unique_group}",
    )
    async with (
        collect(kafka_bootstrap, topics.MODEL_REFUSED, where=lambda e: e.site_id == site) as seen,
        started_broker(kafka_bootstrap, "refusal-audit-test") as producer,
        running(trainer),
        running(inference) as app,
    ):
        router: ModelRouter = app.state.router
        await asyncio.wait_for(router.ready.wait(), TIMEOUT_S)
        await asyncio.to_thread(
            deploy_bundle,
            good.path,
            site=site,
            role=CHAMPION,
            registry=registry,
            bootstrap=kafka_bootstrap,
            requested_by="alice",
        )
        await asyncio.wait_for(
            router.wait_for(lambda r: r.serving_version(site, CHAMPION) == "v1"), TIMEOUT_S
        )
        await asyncio.to_thread(register_bundle, registry, tampered.path, site=site, author="bob")
        edit_after_registration(tampered)  # on disk, between registration and loading
        await publish_event(producer, tampered.deployed(site))
        await asyncio.wait_for(
            router.wait_for(lambda r: r.rejected_version(site, CHAMPION) == "v2"), TIMEOUT_S
        )
        assert router.serving_version(site, CHAMPION) == "v1"

        [refused] = await seen.wait_for(lambda items: len(items) >= 1, TIMEOUT_S)
        assert isinstance(refused, ModelRefused)
        await wait_until(recorded(registry, site, 1), timeout_s=TIMEOUT_S, what="the record")
        # A redelivery adds nothing: the next refusal (same partition, after it) is the marker.
        await publish_event(producer, refused)
        await publish_event(producer, later.deployed(site))  # signed by an untrusted key
        await wait_until(recorded(registry, site, 2), timeout_s=TIMEOUT_S, what="the marker")
        assert router.serving_version(site, CHAMPION) == "v1"

    records = refusals(registry, site)
    assert [(r.model_version, r.reason) for r in records] == [
        ("v2", "signature_invalid"),
        ("v3", "signing_key_untrusted"),
    ]
    first = records[0]
    assert first.actor == refused.instance
    assert first.evidence["deployed_sha256"] == tampered.sha256
    assert first.evidence["still_serving"] == "v1"
    assert first.evidence["event_id"] == refused.event_id

    verified = cli("audit", "verify", db_url=registry.url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    history = cli("models", "history", "--site", site, "--json", db_url=registry.url)
    assert history.returncode == 0, history.stdout + history.stderr
    actions = [(r["action"], r["model_version"]) for r in json.loads(history.stdout)]
    assert ("bundle_refused", "v2") in actions
    assert ("registered", "v1") in actions
