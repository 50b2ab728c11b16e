"""The monitor's HTTP API over a real store (its routes, without Kafka)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from defectloop.common.events import AnnotationStatus, Box, ModelRole
from defectloop.common.http_errors import install_error_handlers
from defectloop.monitor import api
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

from .conftest import EventFactory, SimulatedCamera, simulate

pytestmark = pytest.mark.unit


@pytest.fixture
def recent_site(site: EventFactory) -> EventFactory:
    """The site with recent capture times (the time window is relative to the wall clock)."""
    site.t0 = datetime.now(UTC) - timedelta(days=1)
    return site


@pytest.fixture
def client(store: MonitorStore) -> TestClient:
    app = FastAPI()
    install_error_handlers(app)
    api.install(app, store, MonitorSettings(database_url="sqlite://"))
    return TestClient(app)


def test_unknown_site_is_a_404_with_the_shared_error_body(client: TestClient) -> None:
    resp = client.get("/v1/sites/nosuch/performance")

    assert resp.status_code == 404
    assert "nosuch" in resp.json()["detail"]


def test_invalid_site_id_is_a_422(client: TestClient) -> None:
    assert client.get("/v1/sites/bad%20id").status_code == 422


def test_performance_is_random_stratum_with_n_and_diagnostics(
    store: MonitorStore, client: TestClient, recent_site: EventFactory
) -> None:
    site = recent_site
    store.record(site.deployed("v1", at=site.t0 - timedelta(hours=1)))
    for i in range(30):
        store.record(site.prediction(i, defective=i % 3 == 0))
        store.record(site.annotation(i, defective=i % 3 == 0 or i == 1))  # image 1: a miss
    store.record(site.prediction(40, defective=False))
    store.record(site.annotation(40, defective=True, reason="uncertain"))

    body = client.get(f"/v1/sites/{site.site_id}/performance").json()

    (model,) = body["models"]
    count = model["count_window"]
    assert (model["model_version"], model["role"]) == ("v1", "champion")
    assert count["n_images"] == 30
    assert count["recall"]["n"] == 11
    assert count["recall"]["value"] == pytest.approx(10 / 11)
    assert count["recall"]["ci_low"] < count["recall"]["value"] < count["recall"]["ci_high"]
    assert model["time_window"]["n_images"] == 30
    assert model["per_camera"]["cam-1"]["n_images"] == 30
    assert model["diagnostics"]["uncertain"]["n_images"] == 1


def test_agreement_per_annotator_pair_from_overlap_images(
    store: MonitorStore, client: TestClient, site: EventFactory
) -> None:
    store.record(site.deployed("v1"))
    far = Box(label="scratch", x=200, y=200, w=20, h=20)
    for i in range(10):
        store.record(site.annotation(i, defective=i < 5, annotator="ann-1"))
        # ann-2 agrees on the decision everywhere; on image 0 its box is elsewhere
        boxes = [far] if i == 0 else None
        store.record(site.annotation(i, defective=i < 5, annotator="ann-2", boxes=boxes))
    store.record(site.annotation(20, defective=True, annotator="ann-3"))  # no overlap

    body = client.get(f"/v1/sites/{site.site_id}/agreement").json()

    assert body["pairs"] == 10
    assert body["kappa"] == pytest.approx(1.0)
    assert [p["annotators"] for p in body["by_pair"]] == [["ann-1", "ann-2"]]
    assert body["by_pair"][0]["box_matched_share"] == pytest.approx(4 / 5)


def test_site_series_incidents_and_evaluation_after_a_recall_drop(
    store: MonitorStore, client: TestClient, site: EventFactory
) -> None:
    rng = np.random.default_rng(7)
    evaluator = Evaluator(store, MonitorSettings(database_url="sqlite://"))
    store.record(site.deployed("v1"))
    groups = [
        *simulate(site, rng, 0, 300),
        *simulate(site, rng, 300, 200, cameras=[SimulatedCamera(miss_rate=0.5)]),
    ]
    store.record_many([e for g in groups for e in g])  # type: ignore[misc]
    evaluator.run_once(site.at(500 * 16))

    summary = client.get(f"/v1/sites/{site.site_id}").json()
    incidents = client.get(f"/v1/sites/{site.site_id}/incidents?open=true").json()["incidents"]
    series = client.get(f"/v1/sites/{site.site_id}/series?kind=performance").json()
    state = client.get(f"/v1/sites/{site.site_id}/evaluation").json()
    listed = client.get("/v1/sites").json()["sites"]

    assert summary["state"] == "degraded"
    assert summary["models"]["champion"]["model_version"] == "v1"
    assert [(i["kind"], i["metric"]) for i in incidents] == [("performance", "recall")]
    assert incidents[0]["degraded"]["incident_id"] == incidents[0]["incident_id"]
    recall_points = series["series"]["performance/recall/v1"]
    assert len(recall_points) >= 40  # one evaluation per 10 labels, replayed in arrival order
    assert series["incidents"][0]["incident_id"] == incidents[0]["incident_id"]
    assert state["observations_evaluated"][f"performance/{site.site_id}/v1"] == 500
    degraded = [t for t in state["tracks"] if t["state"] == "degraded"]
    assert [t["metric"] for t in degraded] == ["recall"]
    assert site.site_id in [s["site_id"] for s in listed]


def test_scorecard_pairs_shadow_with_champion(
    store: MonitorStore, client: TestClient, site: EventFactory
) -> None:
    rng = np.random.default_rng(2)
    store.record(site.deployed("v1"))
    store.record(site.deployed("v2", role=ModelRole.SHADOW))
    groups = simulate(
        site,
        rng,
        0,
        120,
        cameras=[SimulatedCamera(miss_rate=0.3, false_alarm_rate=0.0)],
        shadow=("v2", SimulatedCamera(miss_rate=0.02, false_alarm_rate=0.0)),
    )
    store.record_many([e for g in groups for e in g])  # type: ignore[misc]

    (card,) = client.get(f"/v1/sites/{site.site_id}/scorecards").json()["scorecards"]

    assert (card["role"], card["champion_version"], card["candidate_version"]) == (
        "shadow",
        "v1",
        "v2",
    )
    assert card["n_pairs"] == 120
    assert card["recall"]["candidate"] > card["recall"]["champion"]
    assert card["verdict"] == "better"


def test_annotations_per_day_count_each_annotator_and_the_skips(
    store: MonitorStore, client: TestClient, site: EventFactory
) -> None:
    store.record(site.deployed("v1"))  # a site is known from its deployments, frames, predictions
    for i in range(5):
        store.record(site.annotation(i, defective=False, annotator="ann-1"))
    store.record(site.annotation(5, defective=True, annotator="ann-2"))
    store.record(site.annotation(6, defective=False, status=AnnotationStatus.SKIPPED))
    store.record(site.annotation(9000, defective=False, annotator="ann-2"))  # 25 h later

    body = client.get(f"/v1/sites/{site.site_id}/annotations").json()

    assert body["annotators"] == ["ann-1", "ann-2"]
    assert [(d["completed"], d["skipped"], d["total_completed"]) for d in body["days"]] == [
        ({"ann-1": 5, "ann-2": 1}, 1, 6),
        ({"ann-2": 1}, 0, 7),
    ]


def test_dashboard_page_and_its_vendored_chart_library_are_served(client: TestClient) -> None:
    page = client.get("/dashboard")
    script = client.get("/dashboard/static/vendor/uPlot.iife.min.js")

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/dashboard/static/dashboard.js" in page.text
    assert script.status_code == 200
    assert "uPlot" in script.text
    assert client.get("/dashboard/static/nosuch.js").status_code == 404
