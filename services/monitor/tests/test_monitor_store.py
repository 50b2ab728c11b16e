"""The monitor's store: idempotent, order-independent join of predictions and annotations."""

from __future__ import annotations

from datetime import timedelta

import pytest

from defectloop.common.events import AnnotationStatus, DegradationKind, ModelRole
from defectloop.monitor.performance import image_metrics
from defectloop.monitor.records import key_from_text, key_text
from defectloop.monitor.signals import Signal, SignalKey
from defectloop.monitor.store import MonitorStore

from .conftest import T0, EventFactory

pytestmark = pytest.mark.unit


def test_join_is_complete_whichever_side_arrives_first(
    store: MonitorStore, site: EventFactory
) -> None:
    store.record(site.annotation(1, defective=True))  # label before its prediction
    store.record(site.prediction(1, defective=False))
    store.record(site.prediction(2, defective=True))  # prediction before its label
    store.record(site.annotation(2, defective=True))

    rows = store.labelled(site.site_id)

    assert [(r.image_id, r.truth_defective, r.predicted_defective) for r in rows] == [
        (site.image_id(1), True, False),
        (site.image_id(2), True, True),
    ]


def test_redelivered_events_are_recorded_once(store: MonitorStore, site: EventFactory) -> None:
    events = [
        site.captured(1),
        site.prediction(1, defective=True),
        site.annotation(1, defective=True),
        site.deployed("v1"),
    ]
    for event in events + events:
        store.record(event)

    assert len(store.labelled(site.site_id)) == 1
    assert len(store.captured(site.site_id)) == 1
    assert len(store.deployments(site.site_id)) == 1


def test_superseded_annotation_is_replaced_in_either_order(
    store: MonitorStore, site: EventFactory
) -> None:
    store.record(site.prediction(1, defective=False))
    store.record(site.prediction(2, defective=False))
    # image 1: the correction arrives after the original; image 2: before it
    store.record(site.annotation(1, defective=True, annotation_id="a1"))
    store.record(site.annotation(1, defective=False, annotation_id="a1b", supersedes="a1"))
    store.record(site.annotation(2, defective=False, annotation_id="a2b", supersedes="a2"))
    store.record(site.annotation(2, defective=True, annotation_id="a2"))

    rows = store.labelled(site.site_id)

    assert [r.truth_defective for r in rows] == [False, False]
    assert len(store.annotations(site.site_id)) == 2


def test_skipped_annotations_are_counted_never_scored(
    store: MonitorStore, site: EventFactory
) -> None:
    store.record(site.prediction(1, defective=True))
    store.record(site.annotation(1, defective=False, status=AnnotationStatus.SKIPPED))

    assert store.labelled(site.site_id) == []
    assert store.annotation_counts(site.site_id) == {"completed": 0, "skipped": 1}


def test_headline_rows_are_random_stratum_of_the_role(
    store: MonitorStore, site: EventFactory
) -> None:
    store.record(site.prediction(1, defective=True))
    store.record(site.annotation(1, defective=True, reason="uncertain"))
    store.record(site.prediction(2, defective=True))
    store.record(site.prediction(2, defective=False, version="v2", role=ModelRole.SHADOW))
    store.record(site.annotation(2, defective=True))

    headline = store.labelled(site.site_id)
    every_stratum = store.labelled(site.site_id, sampling_reason=None)
    shadow = store.labelled(site.site_id, role=ModelRole.SHADOW)

    assert [r.image_id for r in headline] == [site.image_id(2)]
    assert len(every_stratum) == 2
    assert [(r.model_version, r.predicted_defective) for r in shadow] == [("v2", False)]


def test_overlap_task_scores_once_with_the_first_annotation(
    store: MonitorStore, site: EventFactory
) -> None:
    store.record(site.prediction(1, defective=True))
    store.record(site.annotation(1, defective=True, annotator="ann-1", delay_s=30))
    store.record(site.annotation(1, defective=False, annotator="ann-2", delay_s=90))

    rows = store.labelled(site.site_id)

    assert [(r.annotator, r.truth_defective) for r in rows] == [("ann-1", True)]
    assert store.count_labelled(site.site_id) == 1


def test_windows_by_time_count_and_camera(store: MonitorStore, site: EventFactory) -> None:
    for i in range(10):
        cam = "cam-1" if i % 2 == 0 else "cam-2"
        store.record(site.prediction(i, defective=False, camera_id=cam))
        store.record(site.annotation(i, defective=False, camera_id=cam))

    last3 = store.labelled(site.site_id, last=3)
    timed = store.labelled(site.site_id, since=site.at(2), until=site.at(5))
    no_cam2 = store.labelled(site.site_id, exclude_cameras=["cam-2"])

    assert [r.captured_at for r in last3] == [site.at(7), site.at(8), site.at(9)]
    assert [r.captured_at for r in timed] == [site.at(2), site.at(3), site.at(4)]
    assert {r.camera_id for r in no_cam2} == {"cam-1"}


def test_paired_rows_share_the_same_labelled_images(
    store: MonitorStore, site: EventFactory
) -> None:
    for i in range(4):
        store.record(site.prediction(i, defective=i % 2 == 0))
        if i != 3:  # the shadow missed image 3 (not deployed yet): unpaired
            store.record(site.prediction(i, defective=True, version="v2", role=ModelRole.SHADOW))
        store.record(site.annotation(i, defective=True))

    pairs = store.paired(site.site_id, "v1", "v2")

    assert [(a.image_id, a.model_version, b.model_version) for a, b in pairs] == [
        (site.image_id(i), "v1", "v2") for i in range(3)
    ]


def test_current_models_follow_the_latest_event_per_role(
    store: MonitorStore, site: EventFactory
) -> None:
    store.record(site.deployed("v1", at=T0, baseline={"recall": 0.9}))
    store.record(site.deployed("v2", at=T0 + timedelta(hours=1), role=ModelRole.SHADOW))
    store.record(site.deployed("v2", at=T0 + timedelta(hours=2)))
    store.record(
        site.deployed("v2", at=T0 + timedelta(hours=2), role=ModelRole.SHADOW, active=False)
    )

    current = store.current_models(site.site_id)

    assert {role: d.model_version for role, d in current.items()} == {ModelRole.CHAMPION: "v2"}
    assert store.champion_since(site.site_id, "v2") == T0 + timedelta(hours=2)
    assert store.deployments(site.site_id)[0].baseline_metrics == {"recall": 0.9}


def test_features_and_rejections_per_camera(store: MonitorStore, site: EventFactory) -> None:
    for i in range(5):
        store.record(site.captured(i, "cam-1"))
        store.record(site.captured(i, "cam-2", sharpness=20.0))
    store.record(site.rejected(6, "cam-2"))

    blurred = store.captured(site.site_id, camera_id="cam-2", last=2)

    assert [c.sharpness for c in blurred] == [20.0, 20.0]
    assert [c.captured_at for c in blurred] == [site.at(3), site.at(4)]
    assert [(r.camera_id, r.reason) for r in store.rejections(site.site_id)] == [
        ("cam-2", "too_blurry")
    ]
    assert store.cameras(site.site_id) == ["cam-1", "cam-2"]


def test_outbox_holds_events_until_published(store: MonitorStore, site: EventFactory) -> None:
    from defectloop.common.events import MetricDegraded

    degraded = MetricDegraded(
        site_id=site.site_id,
        model_version="v1",
        kind=DegradationKind.PERFORMANCE,
        metric="recall",
        value=0.6,
        baseline=0.9,
        threshold=0.85,
        window_start=T0,
        window_end=T0 + timedelta(hours=1),
        sample_size=100,
        incident_id="inc-1",
    )
    key = SignalKey(site.site_id, "v1", DegradationKind.PERFORMANCE, "recall")
    signal = Signal(
        key=key,
        value=0.6,
        baseline=0.9,
        threshold=0.85,
        breached=True,
        within_tolerance=False,
        enough_data=True,
        window_start=T0,
        window_end=T0 + timedelta(hours=1),
        sample_size=100,
        evidence={"p": 0.01},
    )
    store.save_evaluation(
        tracks={key: "{}"},
        cursors={"performance/x": 100},
        signals=[signal],
        opened=[degraded],
        closed=[],
        outbox=[degraded],
        evaluated_at=T0,
    )

    assert [e.event_id for e in store.pending_events()] == [degraded.event_id]
    store.mark_published(degraded.event_id)
    assert store.pending_events() == []
    assert [i.incident_id for i in store.incidents(site.site_id, open_only=True)] == ["inc-1"]
    assert store.latest_signals(site.site_id)[0].signal == signal
    assert store.tracks(site.site_id) == {key: "{}"}
    assert store.cursor("performance/x") == 100
    assert store.cursor("never") == 0
    assert key_from_text(key_text(key)) == key


def test_one_batch_with_redeliveries_and_a_correction(
    store: MonitorStore, site: EventFactory
) -> None:
    original = site.annotation(1, defective=True, annotation_id="b1")
    correction = site.annotation(1, defective=False, annotation_id="b1c", supersedes="b1")
    prediction = site.prediction(1, defective=True)

    store.record_many([correction, prediction, prediction, original, correction])
    store.record_many([original, prediction])  # the whole batch again after a crash

    assert [(r.truth_defective, r.annotator) for r in store.labelled(site.site_id)] == [
        (False, "ann-1")
    ]
    assert [a.annotation_id for a in store.annotations(site.site_id)] == ["b1c"]
    assert len(store.annotations(site.site_id, include_superseded=True)) == 2


def test_a_champion_decision_redelivered_by_a_new_model_counts_once(
    store: MonitorStore, site: EventFactory
) -> None:
    # Inference crashed after publishing image 1's prediction (v1) and a switch to v2 came before
    # the redelivery: the topic holds two champion predictions of image 1, one decision_id.
    first = site.prediction(1, defective=True, version="v1")
    again = site.prediction(1, defective=False, version="v2")
    assert first.decision_id == again.decision_id
    assert first.prediction_id != again.prediction_id
    store.record_many([first, site.prediction(2, defective=True, version="v1")])
    store.record(again)  # a later batch
    store.record_many([site.prediction(3, defective=False, version="v2")] * 2)
    store.record_many(
        [
            site.prediction(4, defective=True, version="v2"),
            site.prediction(4, defective=False, version="v1"),
        ]
    )  # same batch
    store.record(site.prediction(1, defective=False, version="v2", role=ModelRole.SHADOW))
    for i, defective in [(1, True), (2, True), (3, True), (4, True)]:
        store.record(site.annotation(i, defective=defective))

    rows = store.labelled(site.site_id, role=ModelRole.CHAMPION)
    metrics = image_metrics(rows)

    # One joined row per image, the first decision seen (what the MES acted on).
    assert [(r.image_id, r.model_version) for r in rows] == [
        (site.image_id(1), "v1"),
        (site.image_id(2), "v1"),
        (site.image_id(3), "v2"),
        (site.image_id(4), "v2"),
    ]
    assert (metrics.tp, metrics.fn, metrics.fp) == (3, 1, 0)
    assert metrics.recall.value == pytest.approx(0.75)
    assert store.count_labelled(site.site_id) == 4
    assert store.count_predictions(site.site_id) == 4
    # The shadow's prediction of image 1 is another decision (role is part of the id): kept.
    assert len(store.predictions(site.site_id, role=ModelRole.SHADOW)) == 1
