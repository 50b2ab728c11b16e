"""The ingest HTTP API against the real Kafka broker.

Events are read back with a topic collector filtered by a site id unique to each test.
Every event of one camera has the same key, hence the same partition and a total order: a final
"sentinel" upload proves that nothing else was published before it (no sleeps).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from defectloop.common import topics
from defectloop.common.blobstore import open_blob_store
from defectloop.common.events import ImageCaptured, ImageRejected, RejectReason, sha256_hex
from defectloop.ingest import auth
from defectloop.ingest.main import build_app
from defectloop.ingest.settings import IngestSettings
from defectloop.testing.kafka import TcpForwarder, collect
from defectloop.testing.net import free_port

pytestmark = pytest.mark.integration

MAX_BODY = 2 * 1024 * 1024


async def read_events(
    bootstrap: str, topic: str, site: str, until: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """Events of ``site`` on ``topic`` (as JSON objects) from the beginning, until ``until(events)``
    holds; other tests' events and poison on the shared topic are skipped by the collector."""

    def as_json(items: list[Any]) -> list[dict[str, Any]]:
        return [item.model_dump(mode="json") for item in items]

    async with collect(bootstrap, topic, where=lambda event: event.site_id == site) as events:
        found = await events.wait_for(lambda items: until(as_json(items)), timeout_s=60)
    return as_json(found)


@dataclass
class Ingest:
    app: FastAPI
    client: httpx.AsyncClient
    settings: IngestSettings
    site: str
    token: str

    async def post(
        self,
        body: bytes,
        *,
        camera: str = "cam-1",
        site: str | None = None,
        token: str | None = "default",
        content_type: str | None = "image/png",
    ) -> httpx.Response:
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        if content_type is not None:
            headers["Content-Type"] = content_type
        return await self.client.post(
            f"/v1/sites/{site or self.site}/cameras/{camera}/images", content=body, headers=headers
        )

    def issue(self, site: str | None = None, camera: str | None = None) -> auth.IssuedToken:
        return auth.issue_token(self.app.state.engine, site or self.site, camera)


def _settings(tmp_path: Path, bootstrap: str, **overrides: Any) -> IngestSettings:
    return IngestSettings(
        kafka_bootstrap=bootstrap,
        database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        max_body_bytes=MAX_BODY,
        **overrides,
    )


@asynccontextmanager
async def running(settings: IngestSettings, *, wait_kafka: bool = True) -> AsyncIterator[Ingest]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        if wait_kafka:
            await app.state.publisher.wait_connected(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            site = "s" + uuid.uuid4().hex[:12]
            token = auth.issue_token(app.state.engine, site).token
            yield Ingest(app=app, client=client, settings=settings, site=site, token=token)


@pytest.fixture
async def ingest(kafka_bootstrap: str, tmp_path: Path) -> AsyncIterator[Ingest]:
    async with running(_settings(tmp_path, kafka_bootstrap)) as harness:
        yield harness


def _has_image(image_id: str) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda events: any(e.get("image_id") == image_id for e in events)


async def test_valid_pngs_are_accepted_and_published_with_their_fields(
    ingest: Ingest, kafka_bootstrap: str, pngs: Any
) -> None:
    bodies = [pngs.valid(seed) for seed in range(5)]
    ids = []
    for body in bodies:
        response = await ingest.post(body)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "accepted"
        ids.append(response.json()["image_id"])

    events = await read_events(
        kafka_bootstrap, topics.IMAGE_CAPTURED, ingest.site, lambda ev: len(ev) >= len(bodies)
    )
    captured = [ImageCaptured.model_validate(e) for e in events]
    assert [e.image_id for e in captured] == ids
    blobs = open_blob_store(ingest.settings.blob_url)
    for event, body in zip(captured, bodies, strict=True):
        assert (event.site_id, event.camera_id) == (ingest.site, "cam-1")
        assert event.sha256 == sha256_hex(body)
        assert (event.width, event.height, event.bit_depth) == (128, 96, 8)
        assert blobs.get(event.blob_uri) == body
        assert event.quality.sharpness > 0
        assert not event.quality.uniform


async def test_duplicate_returns_the_same_id_and_publishes_nothing_new(
    ingest: Ingest, kafka_bootstrap: str, pngs: Any
) -> None:
    body = pngs.valid(21)
    first = await ingest.post(body)
    again = await ingest.post(body)
    assert first.status_code == again.status_code == 202
    assert again.json() == {"image_id": first.json()["image_id"], "status": "duplicate"}

    sentinel = (await ingest.post(pngs.valid(22))).json()["image_id"]
    events = await read_events(
        kafka_bootstrap, topics.IMAGE_CAPTURED, ingest.site, _has_image(sentinel)
    )
    assert [e["image_id"] for e in events] == [first.json()["image_id"], sentinel]


async def test_same_bytes_from_another_camera_is_another_image(ingest: Ingest, pngs: Any) -> None:
    body = pngs.valid(23)
    one = (await ingest.post(body, camera="cam-1")).json()
    two = (await ingest.post(body, camera="cam-2")).json()
    assert one["image_id"] != two["image_id"]
    assert two["status"] == "accepted"


async def test_malformed_corpus_gets_its_status_and_reason_and_valid_images_all_pass(
    ingest: Ingest, kafka_bootstrap: str, pngs: Any
) -> None:
    other_site = ingest.issue(site="o" + uuid.uuid4().hex[:12]).token
    other_camera = ingest.issue(camera="cam-9").token
    revoked = ingest.issue()
    auth.revoke_token(ingest.app.state.engine, revoked.token_id)
    unknown = auth.new_token()[1]
    good = pngs.valid(1)

    # (name, request kwargs, status, reason, publishes image.rejected)
    corpus: list[tuple[str, dict[str, Any], int, str, bool]] = [
        (c.name, {"body": c.body}, c.status, c.reason, True) for c in pngs.bad()
    ]
    corpus += [
        ("oversize", {"body": good + bytes(MAX_BODY)}, 413, "too_large", True),
        ("oversize_by_one", {"body": bytes(MAX_BODY + 1)}, 413, "too_large", True),
        (
            "jpeg_content_type",
            {"body": good, "content_type": "image/jpeg"},
            415,
            "wrong_content_type",
            True,
        ),
        (
            "octet_stream",
            {"body": good, "content_type": "application/octet-stream"},
            415,
            "wrong_content_type",
            True,
        ),
        ("no_content_type", {"body": good, "content_type": None}, 415, "wrong_content_type", True),
        ("no_token", {"body": good, "token": None}, 401, "missing_token", False),
        ("garbage_token", {"body": good, "token": "letmein"}, 401, "invalid_token", False),
        ("unknown_token", {"body": good, "token": unknown}, 401, "invalid_token", False),
        ("revoked_token", {"body": good, "token": revoked.token}, 401, "invalid_token", False),
        ("other_sites_token", {"body": good, "token": other_site}, 403, "forbidden_site", False),
        (
            "other_cameras_token",
            {"body": good, "token": other_camera},
            403,
            "forbidden_camera",
            False,
        ),
    ]
    mutant_bodies = pngs.mutants(seed=99, n=12)

    failures: list[str] = []
    expected_rejections: list[str] = []
    accepted: list[str] = []
    valid_seed = 1000
    for name, kwargs, status, reason, publishes in corpus:
        response = await ingest.post(kwargs.pop("body"), **kwargs)
        error = response.json().get("error")
        if (response.status_code, error) != (status, reason):
            failures.append(f"{name}: got {response.status_code} {error}, want {status} {reason}")
        if publishes:
            expected_rejections.append(reason)
        valid_seed += 1  # a valid image between every two bad ones
        ok = await ingest.post(pngs.valid(valid_seed))
        assert ok.status_code == 202, f"valid image after {name}: {ok.text}"
        accepted.append(ok.json()["image_id"])
    for index, body in enumerate(mutant_bodies):
        response = await ingest.post(body)
        if response.status_code == 202:
            accepted.append(response.json()["image_id"])
            continue
        reason = response.json()["error"]
        if response.status_code not in (413, 415, 422) or reason not in set(RejectReason):
            failures.append(f"mutant {index}: {response.status_code} {reason}")
        expected_rejections.append(reason)
    assert not failures, "\n".join(failures)
    assert len(corpus) + len(mutant_bodies) >= 30

    sentinel = await ingest.post(b"", camera="cam-1")
    assert sentinel.json()["error"] == "empty"
    expected_rejections.append("empty")
    rejected = await read_events(
        kafka_bootstrap,
        topics.IMAGE_REJECTED,
        ingest.site,
        lambda ev: len(ev) >= len(expected_rejections),
    )
    assert [ImageRejected.model_validate(e).reason.value for e in rejected] == expected_rejections
    captured = await read_events(
        kafka_bootstrap, topics.IMAGE_CAPTURED, ingest.site, _has_image(accepted[-1])
    )
    assert [e["image_id"] for e in captured] == accepted


async def test_site_quality_floor_rejects_blurry_frames(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    floors = tmp_path / "floors.yaml"
    async with running(_settings(tmp_path, kafka_bootstrap)) as probe:
        site = probe.site
    floors.write_text(f"{site}:\n  min_sharpness: 1.0e9\n")
    settings = _settings(tmp_path, kafka_bootstrap, quality_floors_file=floors)
    async with running(settings) as harness:
        harness.site = site
        harness.token = harness.issue(site=site).token
        response = await harness.post(pngs.valid(31))
    assert response.status_code == 422
    assert response.json()["error"] == "too_blurry"


async def test_kafka_down_gives_503_within_the_bound_and_health_degraded(
    tmp_path: Path, pngs: Any
) -> None:
    settings = _settings(tmp_path, f"127.0.0.1:{free_port()}", publish_timeout_s=1.0)
    async with running(settings, wait_kafka=False) as harness:
        began = time.monotonic()
        response = await harness.post(pngs.valid(41))
        elapsed = time.monotonic() - began
        health = await harness.client.get("/health")
    assert response.status_code == 503
    assert response.json()["error"] == "broker_unavailable"
    assert int(response.headers["Retry-After"]) > 0
    assert elapsed < settings.publish_timeout_s + 2.0
    assert health.status_code == 503
    assert health.json()["status"] == "degraded"


async def test_ingest_recovers_when_kafka_comes_back_and_the_retry_publishes(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    port = free_port()
    settings = _settings(
        tmp_path, f"127.0.0.1:{port}", publish_timeout_s=1.0, kafka_connect_retry_s=0.2
    )
    body = pngs.valid(51)
    forwarder = TcpForwarder(port, kafka_bootstrap)
    async with running(settings, wait_kafka=False) as harness:
        down = await harness.post(body)
        assert down.status_code == 503
        await forwarder.start()
        try:
            await harness.app.state.publisher.wait_connected(30)
            retry = await harness.post(body)
            again = await harness.post(body)
            health = await harness.client.get("/health")
        finally:
            await forwarder.stop()
    assert health.status_code == 200
    assert retry.status_code == 202
    # The outbox's republisher may have published the kept image before the retry came.
    assert retry.json()["status"] in {"accepted", "duplicate"}
    assert again.json() == {"image_id": retry.json()["image_id"], "status": "duplicate"}
    events = await read_events(
        kafka_bootstrap, topics.IMAGE_CAPTURED, harness.site, _has_image(retry.json()["image_id"])
    )
    assert [e["image_id"] for e in events] == [retry.json()["image_id"]]


async def test_openapi_documents_the_upload(ingest: Ingest) -> None:
    schema = (await ingest.client.get("/openapi.json")).json()
    operation = schema["paths"]["/v1/sites/{site}/cameras/{camera}/images"]["post"]
    assert "image/png" in operation["requestBody"]["content"]
    assert {"202", "401", "403", "413", "415", "422", "503"} <= set(operation["responses"])
    assert "gatewayToken" in schema["components"]["securitySchemes"]


async def test_16_bit_and_colour_frames_are_accepted_with_their_mode_recorded(
    ingest: Ingest, kafka_bootstrap: str, pngs: Any
) -> None:
    gray = pngs.frame(21)
    frames = {
        "gray16": (gray.astype(np.uint16) << 8) | 0xAB,
        "rgb8": np.dstack([gray, gray // 2, 255 - gray]),
        "rgba8": np.dstack([gray, gray, gray, np.full_like(gray, 7)]),
        "rgb16": np.dstack([gray.astype(np.uint16) << 8] * 3),
    }
    ids: dict[str, str] = {}
    for mode, pixels in frames.items():
        response = await ingest.post(pngs.encode(pixels))
        assert response.status_code == 202, response.text
        ids[response.json()["image_id"]] = mode
    events = await read_events(
        kafka_bootstrap, topics.IMAGE_CAPTURED, ingest.site, lambda ev: len(ev) >= len(frames)
    )
    captured = {e["image_id"]: ImageCaptured.model_validate(e) for e in events}
    assert {image_id: captured[image_id].source_mode for image_id in ids} == ids
    for image_id, mode in ids.items():
        event = captured[image_id]
        assert (event.width, event.height) == (128, 96)
        assert event.bit_depth == (16 if mode.endswith("16") else 8)
    # gray16 and rgb16 carry the 8-bit frame in their high bytes: measured as that frame.
    by_mode = {mode: captured[image_id].quality for image_id, mode in ids.items()}
    assert by_mode["gray16"].brightness == by_mode["rgb16"].brightness
    assert abs(by_mode["gray16"].brightness - float(gray.mean())) < 1e-6
