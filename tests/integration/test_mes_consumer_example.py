"""examples/mes_consumer.py acts once per champion decision, on the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from defectloop.common import events
from defectloop.common.kafka import build_broker, publish_event

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mes_consumer.py"


def _prediction(site: str, n: int, role: events.ModelRole) -> events.PredictionMade:
    image_id = events.image_id_for(site, "cam-1", f"{n:064x}")
    return events.PredictionMade(
        site_id=site,
        camera_id="cam-1",
        prediction_id=events.prediction_id_for(image_id, "v1", role.value),
        image_id=image_id,
        sha256=f"{n:064x}",
        blob_uri="file:///x.png",
        width=64,
        height=64,
        boxes=(events.ScoredBox(label="scratch", x=1, y=2, w=3, h=4, score=0.9),) if n % 2 else (),
        defective=bool(n % 2),
        decision_score=0.9 if n % 2 else 0.1,
        decision_threshold=0.5,
        model_name="m",
        model_version="v1",
        role=role,
        outlier_score=0.0,
        outlier=False,
        captured_at=datetime.now(UTC),
        queue_latency_ms=1.0,
        inference_latency_ms=1.0,
    )


async def _publish(kafka_bootstrap: str, site: str) -> None:
    champions = [_prediction(site, n, events.ModelRole.CHAMPION) for n in range(4)]
    broker = build_broker(kafka_bootstrap, client_id="mes-test")
    await broker.start()
    try:
        for p in champions[:3]:
            await publish_event(broker, p)
        await publish_event(broker, champions[1])  # a redelivery
        await publish_event(broker, _prediction(site, 9, events.ModelRole.SHADOW))
        await publish_event(broker, champions[3])
    finally:
        await broker.stop()


def test_mes_example_prints_one_line_per_champion_decision(
    kafka_bootstrap: str, tmp_path: Path, unique_group: str
) -> None:
    site = "mes" + uuid.uuid4().hex[:8]
    asyncio.run(_publish(kafka_bootstrap, site))
    result = subprocess.run(
        [
            sys.executable,
            str(EXAMPLE),
            "--bootstrap",
            kafka_bootstrap,
            "--group",
            unique_group,
            "--site",
            site,
            "--seen-db",
            str(tmp_path / "seen.sqlite"),
            "--max-messages",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    assert sorted(line.split()[0] for line in lines) == ["DIVERT", "DIVERT", "PASS", "PASS"]
    assert all(f"site={site}" in line for line in lines)
    assert "duplicates_ignored=1" in result.stderr
