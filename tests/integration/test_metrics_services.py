"""``/metrics`` of every service parses as Prometheus text, and the counters move with a short
real run (ingest over HTTP -> Kafka -> inference, a poison record on the way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from defectloop.common import topics
from defectloop.common.kafka import build_broker
from defectloop.testing.kafka import collect
from defectloop.testing.net import wait_until

from .conftest import SERVICE_SETTINGS, build_service, frame

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over the samples of ``name`` whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(v for (n, lbl), v in samples.items() if n == name and wanted <= lbl)


@pytest.mark.parametrize("service", sorted(SERVICE_SETTINGS))
async def test_each_service_serves_prometheus_metrics(
    service: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    app = build_service(
        service, kafka_bootstrap=kafka_bootstrap, database_url=f"sqlite:///{tmp_path}/db.sqlite"
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:
            resp = await client.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(resp.text)}
    assert {
        "defectloop_images_accepted",
        "defectloop_predictions",
        "defectloop_end_to_end_latency_seconds",
        "defectloop_dead_letters",
        "defectloop_incidents_open",
        "defectloop_training_jobs",
    } <= families


async def test_counters_move_with_a_short_run(pipeline: Any, kafka_bootstrap: str) -> None:
    async with pipeline() as p, httpx.AsyncClient() as client:
        inference = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=p.inference), base_url="http://inference"
        )
        before = parse((await inference.get("/metrics")).text)
        collected = collect(
            kafka_bootstrap, topics.PREDICTION_MADE, where=lambda e: e.site_id == p.site
        )
        async with collected as predictions:
            for index in range(2):
                assert (await p.post(client, frame(index))).status_code == 202
            truncated = frame(5)[:200]
            assert (await p.post(client, truncated)).status_code == 422
            poison = build_broker(kafka_bootstrap, client_id="obs-poison")
            await poison.start()
            try:
                await poison.publish(b"{not json", topic=topics.IMAGE_CAPTURED, key=p.site.encode())
            finally:
                await poison.stop()
            await predictions.wait_for(lambda found: len(found) >= 2, timeout_s=60)

        dead = {
            "service": "inference",
            "topic": topics.IMAGE_CAPTURED,
            "reason": "schema_violation",
        }

        async def poison_parked() -> Samples | None:
            # The poison may sit on another partition than the images: wait for its dead letter.
            samples = parse((await inference.get("/metrics")).text)
            dead_now = value(samples, "defectloop_dead_letters_total", **dead)
            return (
                samples
                if dead_now > value(before, "defectloop_dead_letters_total", **dead)
                else None
            )

        after = await wait_until(poison_parked, timeout_s=60, what="the poison dead-lettered")
        ingest = parse((await client.get(f"{p.ingest_url}/metrics")).text)
        await inference.aclose()

    assert value(ingest, "defectloop_images_accepted_total", site_id=p.site) == 2
    assert (
        value(ingest, "defectloop_images_rejected_total", site_id=p.site, reason="truncated") == 1
    )
    route = "/v1/sites/{site}/cameras/{camera}/images"
    assert total(ingest, "defectloop_http_requests_total", route=route, status="202") >= 2

    champion = {"site_id": p.site, "model_version": p.model_version, "role": "champion"}
    assert value(after, "defectloop_predictions_total", **champion) == 2
    latency = value(after, "defectloop_end_to_end_latency_seconds_count", site_id=p.site)
    assert latency == 2
    assert total(after, "defectloop_inference_batch_size_count") > total(
        before, "defectloop_inference_batch_size_count"
    )
    lag = [
        labels
        for (name, labels) in after
        if name == "defectloop_consumer_lag" and ("topic", topics.IMAGE_CAPTURED) in labels
    ]
    assert lag, "the consumer's lag is reported per partition of image.captured"
