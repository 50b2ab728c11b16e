"""The monitor's dashboard in a real headless Chromium, after a short real run (issue 11 §6).

A real monitor consumes a real broker; the events of three sites (three cameras each: one site's
model starts missing defects, another site's third camera is blurred, the third stays calm) go
through Kafka. Debian's ``chromium`` (``scripts/ensure-system-deps.sh``) is driven by Playwright
for Python over its own binary (no browser download), with a fresh profile, and must show: no
console error, no request leaving 127.0.0.1, and charts holding data points, read from the page's
own state (``window.dashboard``), not from its HTML. The screenshot lands in ``.artifacts/``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest

from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    Event,
    ImageCaptured,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    ScoredBox,
    image_id_for,
    prediction_id_for,
)
from defectloop.common.kafka import publish_event
from defectloop.monitor import viewers
from defectloop.monitor.main import build_app
from defectloop.monitor.settings import MonitorSettings
from defectloop.testing.browser import CHROMIUM_ARGS, system_chromium
from defectloop.testing.http import serve
from defectloop.testing.kafka import started_broker
from defectloop.testing.net import free_port, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = system_chromium()
ARTIFACTS = Path(__file__).resolve().parents[2] / ".artifacts"
BROWSER_ARGS = list(CHROMIUM_ARGS)
DEFECT = Box(label="scratch", x=10, y=10, w=20, h=20)
FRAMES = 220  # per camera; drift from frame 150
CAMERAS = ("cam-1", "cam-2", "cam-3")


def site_events(site_id: str, *, seed: int, misses_later: bool, blurred_later: bool) -> list[Event]:
    """A deployment, then per frame and camera: image captured, champion prediction, label."""
    rng = np.random.default_rng(seed)
    t0 = datetime.now(UTC) - timedelta(hours=3)
    events: list[Event] = [
        ModelDeployed(
            site_id=site_id,
            role=ModelRole.CHAMPION,
            model_name="detector",
            model_version="v1",
            artifact_uri="file:///bundles/v1",
            sha256="0" * 64,
            baseline_metrics={"recall": 0.92, "precision": 0.95},
            occurred_at=t0 - timedelta(minutes=1),
        )
    ]
    for i in range(FRAMES):
        for c, camera in enumerate(CAMERAS):
            at = t0 + timedelta(seconds=10 * i + c)
            late = i >= 150
            blurred = blurred_later and late and camera == "cam-3"
            truth = bool(rng.random() < 0.3)
            miss = 0.5 if misses_later and late else 0.08
            said = bool(rng.random() < (1 - miss if truth else (0.35 if blurred else 0.02)))
            sha = f"{seed:08x}{i:08x}{c:048x}"
            image_id = image_id_for(site_id, camera, sha)
            sharpness = rng.normal(60.0, 10.0) if blurred else rng.normal(400.0, 40.0)
            events.append(
                ImageCaptured(
                    site_id=site_id,
                    camera_id=camera,
                    image_id=image_id,
                    sha256=sha,
                    blob_uri=f"file:///blobs/{sha}.png",
                    captured_at=at,
                    width=256,
                    height=256,
                    quality=QualityMetrics(
                        sharpness=float(max(sharpness, 1.0)),
                        brightness=float(rng.normal(120.0, 5.0)),
                        contrast=float(rng.normal(40.0, 3.0)),
                        uniform=False,
                    ),
                )
            )
            score = float(rng.uniform(0.6, 0.95) if said else rng.uniform(0.0, 0.3))
            events.append(
                PredictionMade(
                    site_id=site_id,
                    camera_id=camera,
                    prediction_id=prediction_id_for(image_id, "v1", ModelRole.CHAMPION.value),
                    image_id=image_id,
                    sha256=sha,
                    blob_uri=f"file:///blobs/{sha}.png",
                    width=256,
                    height=256,
                    boxes=(ScoredBox(**DEFECT.model_dump(), score=score),) if said else (),
                    defective=said,
                    decision_score=score,
                    decision_threshold=0.5,
                    model_name="detector",
                    model_version="v1",
                    role=ModelRole.CHAMPION,
                    outlier_score=0.1,
                    outlier=False,
                    captured_at=at,
                    queue_latency_ms=1.0,
                    inference_latency_ms=1.0,
                )
            )
            events.append(
                AnnotationCompleted(
                    site_id=site_id,
                    camera_id=camera,
                    image_id=image_id,
                    annotation_id=f"{image_id}-{i % 2}",
                    annotator=f"ann-{i % 2 + 1}",
                    status=AnnotationStatus.COMPLETED,
                    boxes=(DEFECT,) if truth else (),
                    sampling_reason="random",
                    lead_time_s=60.0,
                    occurred_at=at + timedelta(minutes=1),
                )
            )
    return events


async def publish_all(bootstrap: str, events: Sequence[Event]) -> None:
    async with started_broker(bootstrap) as broker:
        for start in range(0, len(events), 300):
            await asyncio.gather(*(publish_event(broker, e) for e in events[start : start + 300]))


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium: scripts/ensure-system-deps.sh")
async def test_dashboard_draws_every_site_from_the_api_in_headless_chromium(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright

    tag = uuid.uuid4().hex[:6]
    missing, blurred, calm = f"dash{tag}a", f"dash{tag}b", f"dash{tag}c"
    settings = MonitorSettings(
        port=free_port(),
        kafka_bootstrap=kafka_bootstrap,
        database_url=f"sqlite:///{tmp_path / 'monitor.db'}",
        sites=(missing, blurred, calm),
        evaluation_interval_s=0.3,
        log_format="console",
        quality_reference_frames=100,
        quality_window_frames=60,
        quality_every_frames=60,
        drift_reference_images=150,
        drift_window_images=150,
        drift_every_images=60,
    )
    app = build_app(settings, group_id=f"dashboard-test-{tag}")
    async with serve(app, port=settings.port) as url:
        await publish_all(
            kafka_bootstrap,
            [
                *site_events(missing, seed=1, misses_later=True, blurred_later=False),
                *site_events(blurred, seed=2, misses_later=False, blurred_later=True),
                *site_events(calm, seed=3, misses_later=False, blurred_later=False),
            ],
        )

        async def evaluated() -> bool:
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                for site in (missing, blurred, calm):
                    resp = await client.get(f"/v1/sites/{site}/evaluation")
                    if resp.status_code == 404:
                        return False
                    state = resp.json()
                    seen = state["observations_evaluated"].get(f"performance/{site}/v1", 0)
                    if seen < FRAMES * len(CAMERAS) - 10 or state["outbox_pending"]:
                        return False
                return True

        await wait_until(evaluated, timeout_s=150, interval_s=0.5, what="three sites evaluated")

        console_errors: list[str] = []
        requests: list[str] = []
        async with async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"),
                executable_path=CHROMIUM,
                headless=True,
                args=BROWSER_ARGS,
                viewport={"width": 1400, "height": 1800},
            )
            page = await context.new_page()
            page.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            await page.goto(f"{url}/dashboard#site={missing}")
            await page.wait_for_function(
                f"window.dashboard && window.dashboard.ready && window.dashboard.site === "
                f"'{missing}' && window.dashboard.charts.annotations !== undefined",
                timeout=60_000,
            )
            first: dict[str, Any] = await page.evaluate("window.dashboard")
            await page.evaluate(f"location.hash = 'site={blurred}'")
            await page.wait_for_function(
                f"window.dashboard.site === '{blurred}' && window.dashboard.charts.quality "
                "&& window.dashboard.charts.quality.points > 0",
                timeout=60_000,
            )
            second: dict[str, Any] = await page.evaluate("window.dashboard")
            cards = await page.locator(".card").count()
            ARTIFACTS.mkdir(exist_ok=True)
            shot = ARTIFACTS / "dashboard.png"
            await page.screenshot(path=str(shot), full_page=True)

            # A viewer token of the calm site (in the URL fragment, as one would share it)
            # asked for another site: the page shows the calm site only, and says so.
            token = viewers.issue([calm], database_url=settings.database_url).token
            scoped = await context.new_page()
            scoped.on(
                "console", lambda m: console_errors.append(m.text) if m.type == "error" else None
            )
            scoped.on("pageerror", lambda e: console_errors.append(str(e)))
            scoped.on("request", lambda r: requests.append(r.url))
            await scoped.goto(f"{url}/dashboard#token={token}&site={missing}")
            await scoped.wait_for_function(
                f"window.dashboard && window.dashboard.ready && window.dashboard.site === "
                f"'{calm}' && window.dashboard.charts.performance !== undefined",
                timeout=60_000,
            )
            third: dict[str, Any] = await scoped.evaluate("window.dashboard")
            scoped_cards = await scoped.locator(".card").all_inner_texts()
            notice = await scoped.locator("#notice").inner_text()
            scoped_url = scoped.url
            scoped_shot = ARTIFACTS / "dashboard-site-scoped.png"
            await scoped.screenshot(path=str(scoped_shot), full_page=True)
            await context.close()
    print(f"dashboard screenshots: {shot} {scoped_shot}")

    assert console_errors == []
    assert first["errors"] == []
    assert second["errors"] == []
    assert {urlparse(u).hostname for u in requests} == {"127.0.0.1"}
    assert cards == 3
    assert {missing, blurred, calm} <= set(first["sites"])
    charts = first["charts"]
    assert charts["performance"]["points"] > 0
    assert charts["performance"]["marks"] >= 2  # the deployment and the recall incident
    assert charts["annotations"]["points"] > 0
    assert charts["drift"]["points"] > 0
    assert second["charts"]["quality"]["points"] > 0
    assert second["charts"]["quality"]["marks"] >= 2  # the deployment and cam-3's incident

    assert third["errors"] == []
    assert third["sites"] == [calm]
    assert len(scoped_cards) == 1
    assert calm in scoped_cards[0]
    assert f"site {missing} is not among the sites" in notice
    assert third["charts"]["performance"]["points"] > 0
    assert "token=" not in scoped_url  # taken out of the address bar (kept for the tab only)
