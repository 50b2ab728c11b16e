"""Ingest under faults (issue 12 §2): the outbox publishes what was recorded once Kafka is back,
and concurrent first frames of the same cameras all succeed.

The outbox test runs its own broker (a KRaft node from ``defectloop.cli.kafka_local``) so it can
stop and start it; the others use the session's broker. A 500 fails every test here: each answer
is checked against the statuses the API documents.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from anyio import to_thread
from fastapi import FastAPI
from sqlalchemy import Engine

from defectloop.common import topics
from defectloop.common.events import ImageCaptured, ImageRejected, image_id_for, sha256_hex
from defectloop.ingest import auth
from defectloop.ingest.main import build_app
from defectloop.ingest.records import ImageStore
from defectloop.ingest.settings import IngestSettings
from defectloop.testing.kafka import collect
from defectloop.testing.net import free_port, wait_until

pytestmark = pytest.mark.integration


@asynccontextmanager
async def serving(settings: IngestSettings) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.publisher.wait_connected(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield app, client


async def post(
    client: httpx.AsyncClient, token: str, site: str, camera: str, body: bytes
) -> httpx.Response:
    return await client.post(
        f"/v1/sites/{site}/cameras/{camera}/images",
        content=body,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
    )


async def _accepted(send: Callable[[], Awaitable[httpx.Response]]) -> httpx.Response:
    async def attempt() -> httpx.Response | None:
        response = await send()
        assert response.status_code in {202, 503}, response.text
        return response if response.status_code == 202 else None

    return await wait_until(attempt, timeout_s=60, interval_s=0.5, what="a 202")


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A broker of this test's own, which it stops and starts (never the shared one)."""
    from defectloop.cli import kafka_local

    layout = kafka_local.KafkaLayout(
        tmp_path_factory.mktemp("own-kafka"), port=free_port(), controller_port=free_port()
    )
    kafka_local.start(layout, partitions=3)
    try:
        yield layout
    finally:
        kafka_local.stop(layout)


async def test_ingest_outbox_publishes_everything_recorded_while_kafka_was_down(
    own_kafka: Any, tmp_path: Path, pngs: Any
) -> None:
    from defectloop.cli import kafka_local

    settings = IngestSettings(
        kafka_bootstrap=own_kafka.bootstrap,
        database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        publish_timeout_s=1.0,
        republish_interval_s=0.2,
        kafka_connect_retry_s=0.2,
    )
    site = "out" + uuid.uuid4().hex[:8]
    cameras = [f"cam-{i}" for i in range(4)]
    async with serving(settings) as (app, client):
        store = ImageStore(app.state.engine)
        token = auth.issue_token(app.state.engine, site).token
        # A fresh broker may still be electing leaders: retry as a gateway does (same bytes).
        before = [
            await _accepted(partial(post, client, token, site, "cam-0", pngs.valid(s)))
            for s in range(3)
        ]

        await to_thread.run_sync(kafka_local.stop, own_kafka)
        # Gateways keep posting (none of them retries): valid frames are kept and answered 503,
        # bad ones are refused at once with their reason, whatever Kafka does.
        frames = [
            (cam, pngs.valid(1000 + 10 * i + n)) for i, cam in enumerate(cameras) for n in range(3)
        ]
        valid = [post(client, token, site, cam, body) for cam, body in frames]
        bad = [post(client, token, site, cam, b"") for cam in cameras]
        bad += [post(client, token, site, cam, pngs.jpeg()) for cam in cameras]
        answers = await asyncio.gather(*valid, *bad)
        statuses = [(r.status_code, r.json().get("error")) for r in answers]
        assert statuses[: len(valid)] == [(503, "broker_unavailable")] * len(valid)
        assert sorted(statuses[len(valid) :]) == sorted(
            [(422, "empty")] * len(cameras) + [(415, "not_png")] * len(cameras)
        )
        images_pending, rejections_pending = await to_thread.run_sync(store.pending_counts)
        assert (images_pending, rejections_pending) == (len(valid), len(bad))

        await to_thread.run_sync(lambda: kafka_local.start(own_kafka, partitions=3))

        async def drained() -> bool:
            return await to_thread.run_sync(store.pending_counts) == (0, 0)

        await wait_until(drained, timeout_s=90, what="the outbox to drain after Kafka returned")

    expected = {r.json()["image_id"] for r in before}
    expected |= {image_id_for(site, cam, sha256_hex(body)) for cam, body in frames}
    async with collect(
        own_kafka.bootstrap,
        [topics.IMAGE_CAPTURED, topics.IMAGE_REJECTED],
        where=lambda e: e.site_id == site,
    ) as events:
        await events.wait_for(
            lambda _: (
                {e.image_id for e in events.of(ImageCaptured)} >= expected
                and len({e.event_id for e in events.of(ImageRejected)}) >= len(bad)
            ),
            timeout_s=60,
        )
    assert {e.image_id for e in events.of(ImageCaptured)} == expected
    reasons = sorted(
        e.reason.value for e in {e.event_id: e for e in events.of(ImageRejected)}.values()
    )
    assert reasons == sorted(["empty"] * len(cameras) + ["not_png"] * len(cameras))


async def _first_frames_all_at_once(settings: IngestSettings, pngs: Any) -> None:
    """8 cameras x 6 first frames posted at once on a fresh database: all 202, all published."""
    site = "race" + uuid.uuid4().hex[:8]
    async with serving(settings) as (app, client):
        token = auth.issue_token(app.state.engine, site).token
        bodies = [(f"cam-{c}", pngs.valid(5000 + 10 * c + n)) for c in range(8) for n in range(6)]
        answers = await asyncio.gather(*(post(client, token, site, c, b) for c, b in bodies))
        statuses = [(r.status_code, r.json()) for r in answers]
        assert all(code == 202 for code, _ in statuses), statuses
        ids = {body["image_id"] for _, body in statuses}
        assert len(ids) == len(bodies)
        store = ImageStore(app.state.engine)
        assert await to_thread.run_sync(store.pending_counts) == (0, 0)
        fingerprints = await to_thread.run_sync(store.previous_fingerprint, site, "cam-0")
        assert fingerprints is not None


async def test_ingest_concurrent_first_frames_of_the_same_cameras_all_succeed_on_sqlite(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    settings = IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=f"sqlite:///{tmp_path / 'fresh.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        cpu_workers=8,
    )
    await _first_frames_all_at_once(settings, pngs)


async def test_ingest_concurrent_first_frames_of_the_same_cameras_all_succeed_on_postgresql(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any, postgres_schema_engine: Engine
) -> None:
    settings = IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=postgres_schema_engine.url.render_as_string(hide_password=False),
        blob_url=(tmp_path / "blobs").as_uri(),
        cpu_workers=8,
    )
    await _first_frames_all_at_once(settings, pngs)
