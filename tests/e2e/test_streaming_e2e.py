"""Camera → ingest (HTTP) → Kafka → inference → prediction.made, with a real trained model.

Everything is real: the Kafka broker, the two services' apps (in this process), the blob store,
the SQLite databases, the ONNX bundle (the bootstrap model of site A, trained once and cached).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from fastapi import FastAPI

from defectloop.common import topics
from defectloop.common.events import ModelDeployed, ModelRole, PredictionMade
from defectloop.common.kafka import build_broker, publish_event

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import os

    from defectloop.cli.bootstrap import bootstrap_bundle

    # The bootstrap registers itself in the trainer registry of the current state dir.
    os.environ.setdefault("DEFECTLOOP_HOME", str(tmp_path_factory.mktemp("state")))
    return bootstrap_bundle("A")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


async def _wait_healthy(client: httpx.AsyncClient, deadline_s: float = 60) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while (await client.get("/health")).status_code != 200:
        assert loop.time() < end, "ingest never connected to Kafka"
        await asyncio.sleep(0.2)  # readiness polling with a deadline


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

    predictions: list[PredictionMade] = []
    changed = asyncio.Condition()
    consumer = AIOKafkaConsumer(
        topics.PREDICTION_MADE, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()

    async def collect() -> None:
        async for record in consumer:
            p = PredictionMade.model_validate_json(record.value)
            if p.site_id == site:
                async with changed:
                    predictions.append(p)
                    changed.notify_all()

    async def wait_for(n: int) -> None:
        async with changed:
            await asyncio.wait_for(changed.wait_for(lambda: len(predictions) >= n), 120)

    collector = asyncio.create_task(collect())
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
    try:
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
    finally:
        collector.cancel()
        await asyncio.gather(collector, return_exceptions=True)
        await consumer.stop()

    assert sorted(p.image_id for p in predictions) == sorted(accepted)
    assert {(p.model_version, p.role) for p in predictions} == {
        (manifest.version, ModelRole.CHAMPION)
    }
    # the bootstrap model sees the simulator's defects: most defective frames are flagged
    assert any(p.defective for p in predictions)
