"""Ingest's public entry points with a failing dependency: only project errors come out.

The HTTP API answers the one error body with a specific reason (never a 500 that hides a
SQLAlchemy or botocore type), and the token door raises defectloop errors only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from defectloop.common.errors import ConfigError, TransientError
from defectloop.ingest import auth, tokens
from defectloop.ingest.main import build_app
from defectloop.ingest.settings import IngestSettings
from defectloop.testing.net import free_port

pytestmark = pytest.mark.unit


def _settings(tmp_path: Path, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {
        "kafka_bootstrap": f"127.0.0.1:{free_port()}",  # nothing listens: Kafka is down
        "database_url": f"sqlite:///{tmp_path / 'ingest.db'}",
        "blob_url": (tmp_path / "blobs").as_uri(),
        "publish_timeout_s": 1.0,
    }
    return IngestSettings(**{**values, **overrides})


@asynccontextmanager
async def _client(settings: IngestSettings) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        token = auth.issue_token(app.state.engine, "A").token
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            client.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "image/png"})
            yield client, token


async def test_a_broken_database_is_a_503_with_its_reason(tmp_path: Path, pngs: Any) -> None:
    settings = _settings(tmp_path)
    async with _client(settings) as (client, _):
        engine = client._transport.app.state.engine  # type: ignore[attr-defined]
        with engine.begin() as connection:  # the token table vanishes under the running service
            connection.execute(text("DROP TABLE ingest_gateway_token"))
        response = await client.post("/v1/sites/A/cameras/cam-1/images", content=pngs.valid(1))
    assert response.status_code == 503
    assert response.json()["error"] == "database_unavailable"
    assert "Retry-After" in response.headers


async def test_an_unreachable_s3_store_is_a_503_with_its_reason(
    tmp_path: Path, pngs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEFECTLOOP_S3_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    async with _client(_settings(tmp_path, blob_url="s3://frames/ingest")) as (client, _):
        response = await client.post("/v1/sites/A/cameras/cam-1/images", content=pngs.valid(2))
    assert response.status_code == 503
    assert response.json()["error"] == "s3_unavailable"


async def test_kafka_down_is_a_503_broker_unavailable(tmp_path: Path, pngs: Any) -> None:
    async with _client(_settings(tmp_path)) as (client, _):
        response = await client.post("/v1/sites/A/cameras/cam-1/images", content=pngs.valid(3))
    assert (response.status_code, response.json()["error"]) == (503, "broker_unavailable")


def test_the_token_door_with_a_missing_database_driver_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        tokens.issue("A", database_url="nosuchdialect://host/ingest")


def test_the_token_door_with_an_unopenable_database_is_transient(tmp_path: Path) -> None:
    with pytest.raises(TransientError):
        tokens.list_tokens(database_url=f"sqlite:///{tmp_path}")  # a directory, not a file
