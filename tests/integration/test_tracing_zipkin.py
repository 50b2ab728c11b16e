"""One trace per image, in a real Zipkin: camera upload (HTTP) -> ingest -> Kafka -> inference ->
prediction.made, every span in the image's own trace with the right parent."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from defectloop.cli.app import build_cli
from defectloop.common import topics, tracing
from defectloop.testing.kafka import collect
from defectloop.testing.net import wait_until

from .conftest import frame

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def _image_trace(zipkin: Any, image_id: str) -> list[list[dict[str, Any]]]:
    """Every trace in Zipkin that has a span tagged with ``image_id``."""
    async with httpx.AsyncClient(base_url=zipkin.url) as client:
        resp = await client.get(
            "/api/v2/traces",
            params={"annotationQuery": f"{tracing.ATTR_IMAGE}={image_id}", "limit": 10},
        )
        resp.raise_for_status()
        # Zipkin's in-memory store may answer one trace as several lists (spans that arrived in
        # separate batches): group by trace id, which is what "one trace" means.
        by_trace: dict[str, list[dict[str, Any]]] = {}
        for spans in resp.json():
            for span in spans:
                by_trace.setdefault(span["traceId"], []).append(span)
        return list(by_trace.values())


async def test_an_uploaded_image_is_one_trace_from_the_request_to_its_prediction(
    pipeline: Any, zipkin: Any, kafka_bootstrap: str, tmp_path: Path, unique_group: str
) -> None:
    from defectloop.annotation_sync.main import build_app as build_annotation_sync
    from defectloop.annotation_sync.settings import AnnotationSyncSettings

    async with pipeline(zipkin_endpoint=zipkin.spans_endpoint) as p:
        # annotation-sync samples every prediction of this test's site (no Label Studio here: the
        # decision is what this test reads; the push waits for a Label Studio that never comes).
        # Only this site: the shared topic holds every earlier test's predictions, and sampling
        # that backlog first kept the image's sampling span out of Zipkin past the deadline.
        sampler = build_annotation_sync(
            AnnotationSyncSettings(
                kafka_bootstrap=kafka_bootstrap,
                database_url=f"sqlite:///{tmp_path / 'annotation-sync.db'}",
                zipkin_endpoint=zipkin.spans_endpoint,
                random_share=1.0,
                daily_budget=1000,
                signing_secret="test-signing-secret",
                sites=[p.site],
                ignore_other_sites=True,
            ),
            group_id=f"{unique_group}-annsync",
        )
        async with sampler.router.lifespan_context(sampler):
            collected = collect(
                kafka_bootstrap, topics.PREDICTION_MADE, where=lambda e: e.site_id == p.site
            )
            async with collected as predictions, httpx.AsyncClient() as client:
                resp = await p.post(client, frame(1))
                assert resp.status_code == 202, resp.text
                image_id = resp.json()["image_id"]
                await predictions.wait_for(lambda found: len(found) >= 1, timeout_s=60)

            # The last span of the trace (the prediction's publish) is exported within a second.
            async def complete() -> list[dict[str, Any]] | None:
                traces = await _image_trace(zipkin, image_id)
                for spans in traces:
                    names = {s.get("name") for s in spans}
                    if {"prediction.made publish", "inference.model", "annotation.sample"} <= names:
                        return spans
                return None

            spans = await wait_until(complete, timeout_s=60, what="the image's trace in Zipkin")
            told = await asyncio.to_thread(
                CliRunner().invoke,
                build_cli(),
                ["trace", image_id, "--zipkin", zipkin.url, "--inference", p.inference_url],
            )

    # One trace holds the image's whole path; other traces tagged with the image are only the
    # work done for it out of band (the Label Studio task push).
    traces = await _image_trace(zipkin, image_id)
    own = [t for t in traces if any(x["name"] == "inference.image" for x in t)]
    assert len(own) == 1, "the image's spans are in one trace, not one per service"
    assert {x["name"] for t in traces if t is not own[0] for x in t} <= {"annotation.push"}
    by_name = {s["name"]: s for s in spans}
    by_id = {s["id"]: s for s in spans}

    def parent(name: str) -> dict[str, Any]:
        return by_id[by_name[name]["parentId"]]

    request = by_name["post /v1/sites/{site}/cameras/{camera}/images"]
    assert "parentId" not in request, "the gateway's request starts the trace"
    assert (request["kind"], request["localEndpoint"]["serviceName"]) == ("SERVER", "ingest")
    assert request["tags"][tracing.ATTR_OUTCOME] == "accepted"
    assert parent("ingest.validate") is request
    assert parent("ingest.store") is request
    # The request publishes its image, or the outbox's republisher did first (its periodic round
    # can find the record before the request's own publish): then in an ingest.republish span,
    # child of the request's span (the trace context stored with the record), tagged as such.
    publisher = parent("image.captured create")
    if publisher["name"] == "ingest.republish":
        assert publisher["tags"][tracing.ATTR_REPUBLISH] == "true"
        assert parent("ingest.republish") is request
    else:
        assert publisher is request
    assert parent("image.captured publish")["name"] == "image.captured create"

    image = by_name["inference.image"]
    assert image["localEndpoint"]["serviceName"] == "inference"
    assert parent("inference.image")["name"] == "image.captured create"
    assert image["tags"][tracing.ATTR_OUTCOME] == "predicted"
    assert image["tags"][tracing.ATTR_MODEL_VERSION] == p.model_version
    assert parent("inference.decode") is image
    assert parent("inference.model") is image
    assert parent("prediction.made create") is image
    assert parent("prediction.made publish")["name"] == "prediction.made create"

    sample = by_name["annotation.sample"]
    assert sample["localEndpoint"]["serviceName"] == "annotation-sync"
    assert (sample["tags"][tracing.ATTR_OUTCOME], sample["tags"][tracing.ATTR_REASON]) == (
        "sampled",
        "random",
    )
    assert parent("annotation.sample")["kind"] == "CONSUMER"  # its prediction.made consumer span
    assert parent("annotation.sample")["parentId"] == by_name["prediction.made create"]["id"]

    # `defectloop trace` tells the same story in the terminal (shown by pytest on a failure).
    print(told.output)
    assert told.exit_code == 0, told.output
    assert f"ingest: accepted at site {p.site}, camera {p.camera}" in told.output
    assert f"by model {p.model_version}" in told.output
    assert "annotation: sampled (random)" in told.output
    assert f"site {p.site} is served now by model {p.model_version}" in told.output

    # The trace as ops see it in the Zipkin UI, kept as an artifact (headless Debian Chromium,
    # the dashboard test's driver; skipped where chromium is not installed).
    if shutil.which("chromium"):
        shot = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                str(ROOT / "scripts" / "zipkin_screenshot.py"),
                "--zipkin",
                zipkin.url,
                "--trace",
                own[0][0]["traceId"],
                "--out",
                str(ROOT / ".artifacts" / "zipkin-trace.png"),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert shot.returncode == 0, shot.stderr
        print(f"zipkin screenshot: {shot.stdout.strip()}")


async def test_trace_of_an_unknown_image_is_one_line_with_a_hint(zipkin: Any) -> None:
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "defectloop.cli", "trace", "no-such-image", "--zipkin", zipkin.url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "error: no trace of image no-such-image in Zipkin"
    assert proc.stderr.splitlines()[1].startswith("hint: ")
