"""Retraining jobs: the incident policy, the state machine, fresh-label counting, the label wait."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from defectloop.common.db import make_engine
from defectloop.common.errors import ConflictError
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    DegradationKind,
    ImageCaptured,
    MetricDegraded,
    ModelDeployed,
    ModelRole,
    QualityMetrics,
)
from defectloop.trainer.jobs import (
    OPEN_STATES,
    TRANSITIONS,
    JobState,
    JobStore,
    RetrainPolicy,
    check_transition,
    enough,
    fresh_counts,
    in_eval_set,
    model_version_for,
)

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def incident(
    site: str,
    kind: DegradationKind = DegradationKind.PERFORMANCE,
    incident_id: str | None = None,
    change_point_at: datetime | None = T0,
) -> MetricDegraded:
    return MetricDegraded(
        site_id=site,
        incident_id=incident_id or f"inc-{uuid.uuid4().hex[:8]}",
        kind=kind,
        metric="recall",
        value=0.5,
        baseline=0.92,
        threshold=0.87,
        window_start=T0 - timedelta(hours=1),
        window_end=T0 + timedelta(hours=1),
        sample_size=120,
        model_version="champion-1",
        change_point_at=change_point_at,
    )


def captured(site: str, image_id: str, at: datetime, sha: str = "a" * 64) -> ImageCaptured:
    return ImageCaptured(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id,
        sha256=sha,
        blob_uri=f"file:///blobs/{sha}.png",
        captured_at=at,
        width=64,
        height=64,
        quality=QualityMetrics(sharpness=100.0, brightness=120.0, contrast=30.0, uniform=False),
    )


def annotation(
    site: str,
    image_id: str,
    *,
    defective: bool,
    status: AnnotationStatus = AnnotationStatus.COMPLETED,
    annotation_id: str | None = None,
    supersedes: str | None = None,
    at: datetime = T0 + timedelta(hours=2),
) -> AnnotationCompleted:
    boxes = (Box(label="scratch", x=4, y=4, w=10, h=3),) if defective else ()
    return AnnotationCompleted(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id,
        annotation_id=annotation_id or f"ann-{image_id}",
        annotator="alice",
        status=status,
        boxes=boxes if status == AnnotationStatus.COMPLETED else (),
        lead_time_s=5.0,
        supersedes=supersedes,
        occurred_at=at,
    )


@pytest.fixture
def store(tmp_path: Path) -> JobStore:
    return JobStore(make_engine(f"sqlite:///{tmp_path / 'trainer.db'}", create_tables=False))


POLICY = RetrainPolicy()


# --- the state machine ------------------------------------------------------------------------


def test_every_edge_of_the_life_cycle_is_allowed() -> None:
    for source, targets in TRANSITIONS.items():
        for target in targets:
            check_transition(source, target)


@pytest.mark.parametrize(
    ("source", "target"),
    [
        (JobState.WAITING_FOR_LABELS, JobState.TRAINING),  # never trains without a snapshot
        (JobState.WAITING_FOR_LABELS, JobState.DEPLOYED),
        (JobState.TRAINING, JobState.DEPLOYED),  # never deploys without gates
        (JobState.SHADOW, JobState.TRAINING),  # a shadow is promoted or rejected, never retrained
        (JobState.GATING, JobState.REJECTED),  # rejected is a shadow's verdict
        (JobState.IGNORED, JobState.WAITING_FOR_LABELS),
        (JobState.TIMED_OUT, JobState.SNAPSHOTTING),
    ],
)
def test_a_transition_off_the_graph_is_refused(source: JobState, target: JobState) -> None:
    with pytest.raises(ConflictError) as err:
        check_transition(source, target)
    assert err.value.reason == "invalid_job_transition"


def test_final_states_have_no_way_out() -> None:
    final = set(JobState) - OPEN_STATES
    assert final == {
        JobState.DEPLOYED,
        JobState.REJECTED,
        JobState.GATE_FAILED,
        JobState.TIMED_OUT,
        JobState.FAILED,
        JobState.IGNORED,
    }
    assert not final & set(TRANSITIONS)


def test_the_store_refuses_an_illegal_transition(store: JobStore) -> None:
    job = store.on_incident(incident("A"), POLICY).job
    with pytest.raises(ConflictError):
        store.update(job.job_id, to=JobState.GATING)
    assert store.get(job.job_id).job_state == JobState.WAITING_FOR_LABELS


def test_model_versions_are_derived_from_job_and_attempt() -> None:
    assert model_version_for("abcdef0123", "B", 1) == model_version_for("abcdef0123", "B", 1)
    assert model_version_for("abcdef0123", "B", 1) != model_version_for("abcdef0123", "B", 2)


# --- incidents -> jobs ------------------------------------------------------------------------


def test_a_data_quality_incident_never_trains_and_says_why(store: JobStore) -> None:
    decision = store.on_incident(incident("C", DegradationKind.DATA_QUALITY), POLICY)
    assert decision.action == "ignore"
    assert decision.job.job_state == JobState.IGNORED
    assert "data_quality" in decision.job.reason
    assert "never" in decision.job.reason
    assert store.open_jobs() == []


def test_drift_incidents_train_only_where_the_policy_allows(store: JobStore) -> None:
    ignored = store.on_incident(incident("A", DegradationKind.DATA_DRIFT), POLICY)
    assert ignored.job.job_state == JobState.IGNORED
    assert "policy" in ignored.job.reason
    allowed = RetrainPolicy(retrain_on_drift=True)
    opened = store.on_incident(incident("A", DegradationKind.DATA_DRIFT), allowed)
    assert opened.action == "open"
    assert opened.job.job_state == JobState.WAITING_FOR_LABELS


def test_one_job_per_site_a_second_incident_is_attached(store: JobStore) -> None:
    first = store.on_incident(incident("B", incident_id="inc-1"), POLICY)
    second = store.on_incident(incident("B", incident_id="inc-2"), POLICY)
    other_site = store.on_incident(incident("A", incident_id="inc-3"), POLICY)
    assert (first.action, second.action, other_site.action) == ("open", "attach", "open")
    assert second.job.job_id == first.job.job_id
    assert store.get(first.job.job_id).incident_ids == ["inc-1", "inc-2"]
    assert sorted(j.site_id for j in store.open_jobs()) == ["A", "B"]


def test_a_redelivered_incident_changes_nothing(store: JobStore) -> None:
    event = incident("B", incident_id="inc-1")
    first = store.on_incident(event, POLICY)
    store.on_incident(incident("B", incident_id="inc-2"), POLICY)
    again = store.on_incident(event, POLICY)
    attached_again = store.on_incident(incident("B", incident_id="inc-2"), POLICY)
    assert (again.action, attached_again.action) == ("duplicate", "duplicate")
    assert store.get(first.job.job_id).incident_ids == ["inc-1", "inc-2"]
    assert len(store.jobs("B")) == 1


def test_a_closed_job_lets_the_next_incident_open_a_new_one(store: JobStore) -> None:
    first = store.on_incident(incident("B", incident_id="inc-1"), POLICY).job
    store.update(first.job_id, to=JobState.TIMED_OUT, reason="no labels")
    second = store.on_incident(incident("B", incident_id="inc-2"), POLICY)
    assert second.action == "open"
    assert second.job.job_id != first.job_id


# --- labels -----------------------------------------------------------------------------------


def test_fresh_labels_skip_skips_and_count_from_the_change_point(store: JobStore) -> None:
    before, after = T0 - timedelta(minutes=5), T0 + timedelta(minutes=5)
    for i in range(4):
        store.record_image(captured("B", f"old-{i}", before))
        store.record_annotation(annotation("B", f"old-{i}", defective=True))
    for i in range(6):
        store.record_image(captured("B", f"new-{i}", after))
    for i in range(3):
        store.record_annotation(annotation("B", f"new-{i}", defective=i == 0))
    store.record_annotation(
        annotation("B", "new-3", defective=False, status=AnnotationStatus.SKIPPED)
    )
    # Labelled, then corrected by a later annotation that supersedes it.
    store.record_annotation(annotation("B", "new-4", defective=False, annotation_id="v1"))
    store.record_annotation(
        annotation("B", "new-4", defective=True, annotation_id="v2", supersedes="v1")
    )
    # A label whose image we never saw captured is not counted.
    store.record_annotation(annotation("B", "unseen", defective=True))

    counts = fresh_counts(store.labelled_images("B"), T0)
    assert (counts.labels, counts.defective) == (4, 2)  # new-0..2 + new-4 (corrected)
    assert enough(
        counts, RetrainPolicy(min_fresh_labels=4, min_fresh_defective=2, min_eval_defective=0)
    )
    assert not enough(
        counts, RetrainPolicy(min_fresh_labels=5, min_fresh_defective=2, min_eval_defective=0)
    )
    assert not enough(
        counts, RetrainPolicy(min_fresh_labels=4, min_fresh_defective=3, min_eval_defective=0)
    )


def test_a_job_waits_until_the_frozen_eval_split_can_power_the_gate() -> None:
    from defectloop.trainer.jobs import LabelledImage

    # Defective fresh images, split the way snapshots freeze them (a hash of the image id).
    ids = [f"img-{i}" for i in range(200)]
    in_eval = [i for i in ids if in_eval_set(i, 0.2)]
    images = [
        LabelledImage(
            image_id=i,
            site_id="B",
            sha256="0" * 64,
            blob_uri=f"file:///blobs/{i}",
            width=64,
            height=64,
            captured_at=T0 + timedelta(minutes=1),
            annotation_id=f"a-{i}",
            boxes=({"label": "scratch", "x": 1, "y": 1, "w": 4, "h": 4},),
        )
        for i in ids
    ]
    counts = fresh_counts(images, T0, 0.2)
    assert counts.eval_defective == len(in_eval)
    policy = RetrainPolicy(min_fresh_labels=1, min_fresh_defective=1, min_eval_defective=10)
    few = fresh_counts([im for im in images if im.image_id in set(in_eval[:9])], T0, 0.2)
    assert not enough(few, policy)  # 9 defective eval images cannot show p < 0.05 often enough
    assert enough(counts, policy)


def test_a_skip_after_a_label_withdraws_it(store: JobStore) -> None:
    store.record_image(captured("B", "img", T0 + timedelta(minutes=1)))
    store.record_annotation(annotation("B", "img", defective=True, annotation_id="a1"))
    store.record_annotation(
        annotation(
            "B",
            "img",
            defective=False,
            status=AnnotationStatus.SKIPPED,
            annotation_id="a2",
            at=T0 + timedelta(hours=3),
        )
    )
    assert store.labelled_images("B") == []


def test_redelivered_facts_are_recorded_once(store: JobStore) -> None:
    image = captured("B", "img", T0)
    label = annotation("B", "img", defective=True)
    assert store.record_image(image)
    assert not store.record_image(image)
    assert store.record_annotation(label)
    assert not store.record_annotation(label)
    assert len(store.labelled_images("B")) == 1


def test_eval_assignment_is_frozen_both_ways(store: JobStore) -> None:
    for i in range(200):
        store.record_image(captured("A", f"img-{i}", T0))
        store.record_annotation(annotation("A", f"img-{i}", defective=i % 2 == 0))
    images = store.labelled_images("A")
    first = store.eval_assignment(images, 0.2)
    assert 20 <= len(first) <= 60  # about a fifth, by hash
    # A different fraction later moves nothing that was already assigned.
    assert store.eval_assignment(images, 0.9) == first
    assert store.eval_assignment(images, 0.01) == first


def test_an_incident_about_a_model_that_no_longer_serves_is_ignored(store: JobStore) -> None:
    def deployed(version: str) -> ModelDeployed:
        return ModelDeployed(
            site_id="B",
            role=ModelRole.CHAMPION,
            model_name="detector",
            model_version=version,
            artifact_uri="file:///bundles/x",
            sha256="b" * 64,
        )

    store.record_deployment(deployed("champion-1"))
    store.record_deployment(deployed("champion-2"))  # promoted since
    stale = store.on_incident(incident("B", incident_id="late"), POLICY)  # about champion-1
    assert stale.job.job_state == JobState.IGNORED
    assert "champion-1" in stale.job.reason
    assert "champion-2" in stale.job.reason
    store.record_deployment(deployed("champion-1"))  # rolled back
    assert store.on_incident(incident("B", incident_id="now"), POLICY).action == "open"
