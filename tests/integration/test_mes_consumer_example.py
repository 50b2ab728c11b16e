"""examples/mes_consumer.py acts once per champion decision, on the real broker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from defectloop.common import events
from defectloop.common.kafka import build_broker, publish_event

from .conftest import decision

pytestmark = pytest.mark.integration

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mes_consumer.py"


def _prediction(site: str, n: int, role: events.ModelRole) -> events.PredictionMade:
    """Image ``n`` of ``site``; odd images are defective."""
    return decision(site, f"{n:064x}", role=role, defective=bool(n % 2))


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
