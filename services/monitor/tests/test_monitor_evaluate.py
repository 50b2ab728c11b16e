"""The evaluator in-process: detectors -> incident state machine -> the events to publish."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import numpy as np
import pytest

from defectloop.common.events import (
    DegradationKind,
    Event,
    ImageCaptured,
    LabelsRequested,
    MetricDegraded,
    MetricRecovered,
    ModelRole,
)
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

from .conftest import EventFactory, SimulatedCamera, simulate

pytestmark = pytest.mark.unit


def feed(
    store: MonitorStore,
    evaluator: Evaluator,
    groups: Sequence[Sequence[object]],
    *,
    every: int = 10,
) -> list[Event]:
    """Record ``every`` groups at a time (one consumed batch), then evaluate at the newest capture."""
    out: list[Event] = []
    for start in range(0, len(groups), every):
        batch = [e for g in groups[start : start + every] for e in g if isinstance(e, Event)]
        store.record_many(batch)
        now = max(e.captured_at for e in batch if isinstance(e, ImageCaptured))
        out.extend(evaluator.run_once(now))
    return out


def of_kind(events: Sequence[Event], kind: DegradationKind) -> list[Event]:
    return [e for e in events if getattr(e, "kind", None) == kind]


@pytest.fixture
def evaluator(store: MonitorStore) -> Evaluator:
    return Evaluator(store, MonitorSettings(database_url="sqlite://"))


def test_recall_drop_opens_one_incident_and_a_better_model_closes_it(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    rng = np.random.default_rng(7)
    store.record(site.deployed("v1"))
    calm = feed(store, evaluator, simulate(site, rng, 0, 400))
    drifted = feed(
        store, evaluator, simulate(site, rng, 400, 300, cameras=[SimulatedCamera(miss_rate=0.45)])
    )
    last = site.at((700 - 1) * 16)
    store.record(site.deployed("v2", at=last + timedelta(seconds=1)))
    fixed = feed(store, evaluator, simulate(site, rng, 700, 300, version="v2"))

    assert of_kind(calm, DegradationKind.PERFORMANCE) == []
    degraded = [e for e in of_kind(drifted, DegradationKind.PERFORMANCE)]
    assert [(type(e), e.metric) for e in degraded] == [(MetricDegraded, "recall")]  # type: ignore[attr-defined]
    incident = degraded[0]
    assert isinstance(incident, MetricDegraded)
    assert (incident.ci_high or 1.0) < incident.threshold
    assert (incident.n_positive or 0) >= 20
    asks = [e for e in drifted if isinstance(e, LabelsRequested)]
    assert any(a.incident_id == incident.incident_id for a in asks)
    recovered = [e for e in fixed if isinstance(e, MetricRecovered)]
    assert [
        (r.incident_id, r.reason) for r in recovered if r.kind == DegradationKind.PERFORMANCE
    ] == [(incident.incident_id, "model_retired")]
    assert (
        of_kind([e for e in fixed if isinstance(e, MetricDegraded)], DegradationKind.PERFORMANCE)
        == []
    )
    assert store.incidents(site.site_id, open_only=True, kind=DegradationKind.PERFORMANCE) == []


def test_rerunning_on_unchanged_data_publishes_nothing_new(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    rng = np.random.default_rng(3)
    store.record(site.deployed("v1"))
    feed(store, evaluator, simulate(site, rng, 0, 200))
    events = feed(
        store, evaluator, simulate(site, rng, 200, 200, cameras=[SimulatedCamera(miss_rate=0.5)])
    )
    assert of_kind(events, DegradationKind.PERFORMANCE)

    again = evaluator.run_once(site.at(400 * 16))

    assert of_kind(again, DegradationKind.PERFORMANCE) == []


def test_blurred_camera_is_a_data_quality_incident_not_a_performance_one(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    rng = np.random.default_rng(11)
    store.record(site.deployed("v1"))
    good = [SimulatedCamera("cam-1"), SimulatedCamera("cam-2"), SimulatedCamera("cam-3")]
    blurred = [good[0], good[1], SimulatedCamera("cam-3", blurred=True)]
    calm = feed(store, evaluator, simulate(site, rng, 0, 250, cameras=good))
    fault = feed(store, evaluator, simulate(site, rng, 250, 200, cameras=blurred))

    assert of_kind(calm, DegradationKind.DATA_QUALITY) == []
    quality = [
        e for e in of_kind(fault, DegradationKind.DATA_QUALITY) if isinstance(e, MetricDegraded)
    ]
    assert [(e.camera_id, e.model_version) for e in quality] == [("cam-3", None)]
    assert of_kind(calm + fault, DegradationKind.PERFORMANCE) == []
    assert not [
        e
        for e in fault
        if isinstance(e, LabelsRequested) and e.incident_id == quality[0].incident_id
    ]


def test_first_window_is_the_baseline_without_deployment_metrics(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    rng = np.random.default_rng(5)
    store.record(site.deployed("v1"))
    feed(store, evaluator, simulate(site, rng, 0, 250))

    baselines = store.baselines(site.site_id, "v1")
    rows = store.labelled(site.site_id)
    first = rows[: baselines["recall"].sample_size]
    measured = sum(r.predicted_defective for r in first if r.truth_defective) / sum(
        r.truth_defective for r in first
    )

    assert {m: b.source for m, b in baselines.items()} == {
        "recall": "first_window",
        "precision": "first_window",
    }
    assert baselines["recall"].sample_size >= 100
    assert baselines["recall"].n_positive >= 40
    assert baselines["recall"].value < measured  # the conservative end of its interval


def test_deployment_baseline_wins_when_present(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    rng = np.random.default_rng(5)
    store.record(site.deployed("v1", baseline={"recall": 0.93, "precision": 0.9, "map50": 0.8}))
    feed(store, evaluator, simulate(site, rng, 0, 20))

    baselines = store.baselines(site.site_id, "v1")

    assert {m: (b.value, b.source) for m, b in baselines.items()} == {
        "recall": (0.93, "deployment"),
        "precision": (0.9, "deployment"),
    }
    assert store.current_models(site.site_id)[ModelRole.CHAMPION].model_version == "v1"


def test_the_trainers_hold_out_metrics_are_the_baseline(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    rng = np.random.default_rng(5)
    store.record(site.deployed("v1", baseline={"val_recall": 0.91, "val_precision": 0.97}))
    feed(store, evaluator, simulate(site, rng, 0, 20))

    baselines = store.baselines(site.site_id, "v1")

    assert {m: (b.value, b.source) for m, b in baselines.items()} == {
        "recall": (0.91, "deployment"),
        "precision": (0.97, "deployment"),
    }


def test_a_site_wide_change_seen_first_on_one_camera_is_not_that_cameras_fault(
    store: MonitorStore, evaluator: Evaluator, site: EventFactory
) -> None:
    """The lamp fails for both cameras at once, but cam-1's frames reach the monitor 60 frames
    late: the quality checkpoints wait for cam-1 to catch up instead of comparing cam-2's darkened
    window with cam-1's older, normal one (which would blame cam-2 alone)."""
    rng = np.random.default_rng(13)
    store.record(site.deployed("v1"))
    cams = [SimulatedCamera("cam-1"), SimulatedCamera("cam-2")]
    dark = [SimulatedCamera("cam-1", brightness=90.0), SimulatedCamera("cam-2", brightness=90.0)]
    calm = feed(store, evaluator, simulate(site, rng, 0, 250, cameras=cams))
    frames = simulate(site, rng, 250, 200, cameras=dark)
    cam_1 = [g for g in frames if g[0].camera_id == "cam-1"]  # type: ignore[attr-defined]
    cam_2 = [g for g in frames if g[0].camera_id == "cam-2"]  # type: ignore[attr-defined]
    lag = 60
    arrivals = [*cam_2[:lag]]
    for i in range(lag, len(cam_2)):
        arrivals += [cam_2[i], cam_1[i - lag]]
    arrivals += cam_1[len(cam_2) - lag :]
    changed = feed(store, evaluator, arrivals)

    assert of_kind(calm + changed, DegradationKind.DATA_QUALITY) == []
    assert store.count_captured(site.site_id) == 2 * 450  # every frame was seen
