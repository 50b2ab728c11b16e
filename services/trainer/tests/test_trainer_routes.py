"""The trainer's HTTP view of its jobs (what ops and the live demo view read)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from defectloop.common.events import DegradationKind, MetricDegraded
from defectloop.common.kafka import build_broker
from defectloop.trainer.main import build_app
from defectloop.trainer.retrain import Retrainer
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit

AT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def incident(site: str, kind: DegradationKind, incident_id: str) -> MetricDegraded:
    return MetricDegraded(
        site_id=site,
        incident_id=incident_id,
        kind=kind,
        metric="recall",
        value=0.4,
        baseline=0.92,
        threshold=0.87,
        window_start=AT,
        window_end=AT + timedelta(minutes=5),
        sample_size=80,
        change_point_at=AT,
    )


@pytest.fixture
def client_and_retrainer(tmp_path: Path) -> tuple[TestClient, Retrainer]:
    settings = TrainerSettings(
        database_url=f"sqlite:///{tmp_path / 'trainer.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        work_dir=tmp_path / "work",
    )
    # No lifespan: the broker is never connected; the routes read the database only.
    app = build_app(settings, broker=build_broker("127.0.0.1:1", client_id="unused"))
    return TestClient(app), app.state.retrainer


async def test_jobs_are_listed_per_site_with_their_state_and_reason(
    client_and_retrainer: tuple[TestClient, Retrainer],
) -> None:
    client, retrainer = client_and_retrainer
    opened = await retrainer.on_incident(incident("B", DegradationKind.PERFORMANCE, "p1"))
    await retrainer.on_incident(incident("C", DegradationKind.DATA_QUALITY, "q1"))
    body = client.get("/v1/jobs", params={"site": "B"}).json()
    assert [(j["job_id"], j["state"], j["incident_ids"]) for j in body] == [
        (opened.job.job_id, "waiting_for_labels", ["p1"])
    ]
    assert body[0]["detail"] == {
        "baseline": 0.92,
        "ci_high": None,
        "ci_low": None,
        "metric": "recall",
        "n_positive": None,
        "sample_size": 80,
        "threshold": 0.87,
        "value": 0.4,
        "window_end": (AT + timedelta(minutes=5)).isoformat(),
        "window_start": AT.isoformat(),
    }
    [ignored] = client.get("/v1/jobs", params={"site": "C"}).json()
    assert ignored["state"] == "ignored"
    assert "data_quality" in ignored["reason"]
    one = client.get(f"/v1/jobs/{opened.job.job_id}")
    assert one.status_code == 200
    assert one.json()["site_id"] == "B"


def test_an_unknown_job_is_a_404_and_a_bad_site_a_422(
    client_and_retrainer: tuple[TestClient, Retrainer],
) -> None:
    client, _ = client_and_retrainer
    missing = client.get("/v1/jobs/no-such-job")
    assert missing.status_code == 404
    assert "no-such-job" in missing.json()["detail"]
    assert client.get("/v1/jobs", params={"site": "../etc"}).status_code == 422
