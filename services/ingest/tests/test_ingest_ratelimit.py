"""Upload limits per gateway token and per site: 429 with Retry-After, nothing refused kept.

The real ingest app (httpx ASGI transport) on the real broker: the limits are minute windows
where a test must not see them free up (no time to race), and a one-second window where the
client waiting for ``Retry-After`` is the behaviour under test.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from defectloop.common import topics
from defectloop.common.events import ImageRejected
from defectloop.ingest import auth
from defectloop.ingest.main import build_app
from defectloop.ingest.settings import IngestSettings
from defectloop.testing.kafka import collect, read_to_end
from defectloop.testing.net import wait_until

ERROR_KEYS = {"error", "detail", "hint"}


@asynccontextmanager
async def ingest(
    kafka_bootstrap: str, tmp_path: Path, **limits: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    settings = IngestSettings(
        kafka_bootstrap=kafka_bootstrap,
        database_url=f"sqlite:///{tmp_path / 'ingest.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        **limits,
    )
    app = build_app(settings)
    async with app.router.lifespan_context(app):
        await app.state.publisher.wait_connected(60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            yield app, client


def poster(
    client: httpx.AsyncClient, site: str, png: Callable[[int], bytes]
) -> Callable[[str, int], Any]:
    async def post(token: str, seed: int) -> httpx.Response:
        return await client.post(
            f"/v1/sites/{site}/cameras/cam-1/images",
            content=png(seed),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )

    return post


def blob_files(tmp_path: Path) -> int:
    return sum(1 for p in (tmp_path / "blobs").rglob("*") if p.is_file())


@pytest.mark.integration
async def test_a_token_over_its_limit_gets_429_and_nothing_refused_is_stored_or_published(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    site = "rl" + uuid.uuid4().hex[:10]
    async with (
        ingest(kafka_bootstrap, tmp_path, rate_limit_per_token="5/minute") as (app, client),
        collect(
            kafka_bootstrap, topics.IMAGE_CAPTURED, where=lambda e: e.site_id == site
        ) as captured,
    ):
        busy = auth.issue_token(app.state.engine, site).token
        other = auth.issue_token(app.state.engine, site).token
        post = poster(client, site, pngs.valid)
        answers = [await post(busy, seed) for seed in range(8)]
        neighbour = await post(other, 100)  # another gateway of the site is not limited by it

        assert [a.status_code for a in answers] == [202] * 5 + [429] * 3
        for refused in answers[5:]:
            assert set(refused.json()) == ERROR_KEYS
            assert refused.json()["error"] == "rate_limited"
            assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert neighbour.status_code == 202
        accepted = {a.json()["image_id"] for a in [*answers[:5], neighbour]}
        # Nothing accepted is lost: every 202 is on image.captured ...
        await captured.wait_for(lambda items: {e.image_id for e in items} >= accepted)
    # ... and nothing refused was stored (one blob per accepted frame) or published.
    assert {e.image_id for e in captured.items} == accepted
    assert blob_files(tmp_path) == len(accepted)
    rejected = await read_to_end(
        kafka_bootstrap,
        topics.IMAGE_REJECTED,
        model=ImageRejected,
        where=lambda e: e.site_id == site,
    )
    assert rejected == []


@pytest.mark.integration
async def test_a_sites_own_limit_holds_across_its_tokens_and_other_sites_keep_the_default(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    slow, usual = "slow" + uuid.uuid4().hex[:8], "usual" + uuid.uuid4().hex[:8]
    limits = {"rate_limit_sites": {slow: {"per_site": "3/minute"}}}
    async with ingest(kafka_bootstrap, tmp_path, **limits) as (app, client):
        tokens = [auth.issue_token(app.state.engine, slow).token for _ in range(2)]
        post_slow = poster(client, slow, pngs.valid)
        answers = [await post_slow(tokens[n % 2], n) for n in range(4)]
        usual_token = auth.issue_token(app.state.engine, usual).token
        post_usual = poster(client, usual, pngs.valid)
        elsewhere = [await post_usual(usual_token, 50 + n) for n in range(4)]

    assert [a.status_code for a in answers] == [202, 202, 202, 429]
    assert f"site {slow}" in answers[3].json()["detail"]
    assert [a.status_code for a in elsewhere] == [202] * 4


@pytest.mark.integration
async def test_a_gateway_that_waits_for_retry_after_gets_in(
    kafka_bootstrap: str, tmp_path: Path, pngs: Any
) -> None:
    """Refused uploads use up nothing: retrying while refused does not push the window on."""
    site = "rl" + uuid.uuid4().hex[:10]
    async with ingest(kafka_bootstrap, tmp_path, rate_limit_per_token="2/second") as (app, client):
        token = auth.issue_token(app.state.engine, site).token
        post = poster(client, site, pngs.valid)
        first = [await post(token, seed) for seed in range(3)]
        assert [a.status_code for a in first] == [202, 202, 429]
        assert first[2].headers["Retry-After"] == "1"

        async def admitted() -> httpx.Response | None:
            answer = await post(token, 3)
            return answer if answer.status_code == 202 else None

        later = await wait_until(admitted, timeout_s=10, interval_s=0.25, what="admitted again")
    assert later.json()["status"] == "accepted"


@pytest.mark.unit
def test_an_invalid_limit_is_refused_at_start_naming_the_setting() -> None:
    with pytest.raises(ValidationError) as invalid:
        IngestSettings(rate_limit_per_token="lots")
    assert "rate_limit_per_token" in str(invalid.value)
    with pytest.raises(ValidationError) as invalid_site:
        IngestSettings(rate_limit_sites={"A": {"per_site": "3 per fortnight"}})
    assert "rate_limit_sites" in str(invalid_site.value)
