"""Camera → ingest (HTTP) → Kafka → inference → prediction.made, with a real trained model.

Everything is real: the Kafka broker, the two services' apps (in this process), the blob store,
the SQLite databases, the ONNX bundle (the bootstrap model of site A, trained once and cached).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from defectloop.common import topics
from defectloop.common.events import ModelDeployed, ModelRole, PredictionMade
from defectloop.common.kafka import build_broker, publish_event
from defectloop.testing.kafka import collect, read_to_end
from defectloop.testing.net import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # In its own process, as `defectloop up` does it (torch's thread pools are set up fresh there);
    # it registers itself in the trainer registry of a throw-away state dir.
    env = {**os.environ, "DEFECTLOOP_HOME": str(tmp_path_factory.mktemp("state"))}
    code = "from defectloop.cli.bootstrap import bootstrap_bundle; print(bootstrap_bundle('A'))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


async def _wait_healthy(client: httpx.AsyncClient, deadline_s: float = 60) -> None:
    async def healthy() -> bool:
        return (await client.get("/health")).status_code == 200

    await wait_until(healthy, timeout_s=deadline_s, what="ingest connected to Kafka")


async def test_posted_images_become_exactly_one_prediction_each(
    kafka_bootstrap: str, bundle: Path, tmp_path: Path, unique_group: str
) -> None:
    from defectloop.factory_sim import encode_png, get_site, render
    from defectloop.inference.main import build_app as build_inference
    from defectloop.inference.settings import InferenceSettings
    from defectloop.ingest.auth import issue_token
    from defectloop.ingest.main import build_app as build_ingest
    from defectloop.ingest.records import open_database
    from defectloop.ingest.settings import IngestSettings
    from defectloop.vision.manifest import load_manifest

    site = "e2e" + uuid.uuid4().hex[:8]
    manifest = load_manifest(bundle)
    blobs = (tmp_path / "blobs").as_uri()
    ingest_db = f"sqlite:///{tmp_path}/ingest.db"
    token = issue_token(open_database(ingest_db), site, "cam-1").token

    producer = build_broker(kafka_bootstrap, client_id="e2e-deployer")
    await producer.start()
    await publish_event(
        producer,
        ModelDeployed(
            site_id=site,
            role=ModelRole.CHAMPION,
            model_name=manifest.name,
            model_version=manifest.version,
            artifact_uri=str(bundle),
            sha256=manifest.sha256,
        ),
    )
    await producer.stop()

    ingest = build_ingest(
        IngestSettings(kafka_bootstrap=kafka_bootstrap, database_url=ingest_db, blob_url=blobs)
    )
    inference = build_inference(
        InferenceSettings(
            kafka_bootstrap=kafka_bootstrap,
            blob_url=blobs,
            group_id=unique_group,
            providers="cpu",
            database_url=f"sqlite:///{tmp_path}/inference.db",
        )
    )
    profile = get_site("A")
    accepted: list[str] = []
    collected = collect(kafka_bootstrap, topics.PREDICTION_MADE, where=lambda p: p.site_id == site)
    async with collected as predictions:

        async def wait_for(n: int) -> None:
            await predictions.wait_for(lambda found: len(found) >= n, timeout_s=120)

        async with _lifespan(ingest), _lifespan(inference):
            transport = httpx.ASGITransport(app=ingest)
            async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
                await _wait_healthy(client)
                url = f"/v1/sites/{site}/cameras/cam-1/images"
                headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
                for index in range(12):
                    png = encode_png(render(profile, index, seed=99).pixels)
                    resp = await client.post(url, content=png, headers=headers)
                    assert resp.status_code == 202, resp.text
                    accepted.append(resp.json()["image_id"])
                    # interleave bad input: it is refused and must not disturb the valid stream
                    bad = await client.post(url, content=png[: len(png) // 2], headers=headers)
                    assert bad.status_code == 422
                # the same bytes again: same image id, nothing new published
                again = await client.post(
                    url, content=encode_png(render(profile, 0, seed=99).pixels), headers=headers
                )
                assert again.json() == {"image_id": accepted[0], "status": "duplicate"}
                await wait_for(len(accepted))
                # a last image on the same camera (same partition, in order): when its prediction
                # is in, any duplicate of an earlier one would be in too
                marker = encode_png(render(profile, 1000, seed=99).pixels)
                last = await client.post(url, content=marker, headers=headers)
                accepted.append(last.json()["image_id"])
                await wait_for(len(accepted))

    made: list[PredictionMade] = predictions.items
    assert sorted(p.image_id for p in made) == sorted(accepted)
    assert {(p.model_version, p.role) for p in made} == {
        (manifest.version, ModelRole.CHAMPION)
    }
    # the bootstrap model sees the simulator's defects: most defective frames are flagged
    assert any(p.defective for p in made)


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEFECTLOOP_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "defectloop.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_models_deploy_registers_and_publishes_model_deployed(
    kafka_bootstrap: str, bundle: Path, tmp_path: Path
) -> None:
    from defectloop.vision.manifest import load_manifest

    site = "dep" + uuid.uuid4().hex[:8]
    result = _cli(
        tmp_path,
        "models",
        "deploy",
        str(bundle),
        "--site",
        site,
        "--role",
        "shadow",
        "--bootstrap",
        kafka_bootstrap,
    )
    assert result.returncode == 0, result.stderr
    manifest = load_manifest(bundle)

    deployments = read_to_end(
        kafka_bootstrap, topics.MODEL_DEPLOYED, model=ModelDeployed, where=lambda d: d.site_id == site
    )
    [event] = asyncio.run(deployments)
    assert (event.role, event.model_version, event.sha256) == (
        ModelRole.SHADOW,
        manifest.version,
        manifest.sha256,
    )
    listed = _cli(tmp_path, "models", "show", manifest.version)
    assert listed.returncode == 0, listed.stderr


def test_models_deploy_refuses_a_tampered_bundle_in_one_line(
    kafka_bootstrap: str, bundle: Path, tmp_path: Path
) -> None:
    import shutil

    tampered = tmp_path / "bundle"
    shutil.copytree(bundle, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    result = _cli(
        tmp_path, "models", "deploy", str(tampered), "--site", "x", "--bootstrap", kafka_bootstrap
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error:")
    assert "Traceback" not in result.stderr
