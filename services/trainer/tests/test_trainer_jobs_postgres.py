"""The trainer's retraining jobs behave on a real PostgreSQL exactly as on SQLite.

One scenario (an incident opens a job, a second one attaches, labels arrive with a correction, a
skip and redeliveries, the job walks its life cycle to deployed) runs on a SQLite file and on a
fresh PostgreSQL schema in a non-UTC session time zone; what the store answers must be equal.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from defectloop.common.db import make_engine
from defectloop.common.errors import ConflictError
from defectloop.common.events import AnnotationStatus, DegradationKind, ModelDeployed, ModelRole
from defectloop.trainer.jobs import (
    Job,
    JobState,
    JobStore,
    RetrainPolicy,
    fresh_counts,
    model_version_for,
)

from .test_trainer_jobs import T0, annotation, captured, incident

pytestmark = pytest.mark.integration

SITE = "pg-site"
POLICY = RetrainPolicy(min_fresh_labels=3, min_fresh_defective=1, min_eval_defective=0)


def _job(job: Job) -> dict[str, Any]:
    """What a job holds, less the wall-clock times the store stamps itself."""
    return job.model_dump(exclude={"opened_at", "updated_at", "deadline_at"})


def _scenario(store: JobStore) -> dict[str, Any]:
    champion = ModelDeployed(
        event_id="deployed-1",
        site_id=SITE,
        role=ModelRole.CHAMPION,
        model_name="detector",
        model_version="champion-1",
        artifact_uri="file:///bundles/champion-1",
        sha256="b" * 64,
    )
    store.record_deployment(champion)
    store.record_deployment(champion)  # redelivered
    opened = store.on_incident(incident(SITE, incident_id="inc-1"), POLICY)
    attached = store.on_incident(incident(SITE, incident_id="inc-2"), POLICY)
    ignored = store.on_incident(incident(SITE, DegradationKind.DATA_QUALITY, "inc-3"), POLICY)
    redelivered = [
        store.on_incident(incident(SITE, incident_id=i), POLICY).action for i in ("inc-1", "inc-2")
    ]

    # img-0..2 captured before the change point T0, img-3..7 after it.
    images = [
        captured(SITE, f"img-{i}", T0 + timedelta(minutes=i - 3), sha=f"{i:064x}") for i in range(8)
    ]
    labels = [annotation(SITE, f"img-{i}", defective=i in (0, 3)) for i in range(7) if i != 5]
    labels += [
        annotation(SITE, "img-5", defective=False, status=AnnotationStatus.SKIPPED),
        annotation(
            SITE,
            "img-4",
            defective=True,
            annotation_id="ann-img-4c",
            supersedes="ann-img-4",
            at=T0 + timedelta(hours=3),
        ),
        annotation(SITE, "img-99", defective=True),  # an image never seen captured
    ]
    first = [store.record_image(e) for e in images] + [store.record_annotation(e) for e in labels]
    again = [store.record_image(e) for e in images] + [store.record_annotation(e) for e in labels]
    labelled = store.labelled_images(SITE)
    job_id = opened.job.job_id
    counts = fresh_counts(labelled, store.get(job_id).change_point_at)
    store.update(job_id, fresh_labels=counts.labels, fresh_defective=counts.defective)
    store.update(job_id, to=JobState.SNAPSHOTTING, reason="labels are in")
    store.update(job_id, to=JobState.TRAINING, snapshot_sha256="c" * 64, run_handle="run-1")
    store.update(job_id, to=JobState.SNAPSHOTTING, attempt=2, reason="the run was lost")
    store.update(job_id, to=JobState.TRAINING)
    store.update(job_id, to=JobState.GATING, candidate_version=model_version_for(job_id, SITE, 2))
    with pytest.raises(ConflictError):
        store.update(job_id, to=JobState.REJECTED)  # only a shadow is rejected
    store.update(job_id, to=JobState.SHADOW)
    store.update(job_id, to=JobState.DEPLOYED, reason="promoted")
    reopened = store.on_incident(incident(SITE, incident_id="inc-4"), POLICY)
    serving = store.champion(SITE)
    return {
        "actions": [opened.action, attached.action, ignored.action, *redelivered, reopened.action],
        "first": first,
        "again": again,
        "labelled": [asdict(i) for i in labelled],
        "counts": counts,
        "eval": store.eval_assignment(labelled, 0.5),
        "eval_again": store.eval_assignment(labelled, 0.01),
        "job": _job(store.get(job_id)),
        "jobs": [_job(j) for j in store.jobs(SITE)],
        "open": [_job(j) for j in store.open_jobs()],
        "champion": serving.model_dump() if serving is not None else None,
        "change_point": store.get(job_id).change_point_at,
    }


def test_jobs_behave_the_same_on_postgres_as_on_sqlite(
    postgres_schema_engine: Engine, tmp_path: Path
) -> None:
    sqlite = _scenario(
        JobStore(make_engine(f"sqlite:///{tmp_path / 'trainer.db'}", create_tables=False))
    )
    postgres = _scenario(JobStore(postgres_schema_engine))

    # The scenario did what it claims (equality below is not of empty results).
    assert sqlite["actions"] == ["open", "attach", "ignore", "duplicate", "duplicate", "open"]
    assert all(sqlite["first"])
    assert not any(sqlite["again"])
    assert [(i["image_id"], i["annotation_id"]) for i in sqlite["labelled"]] == [
        *((f"img-{i}", f"ann-img-{i}") for i in range(4)),
        ("img-4", "ann-img-4c"),  # the correction
        ("img-6", "ann-img-6"),  # img-5 skipped, img-7 never labelled, img-99 never captured
    ]
    assert (sqlite["counts"].labels, sqlite["counts"].defective) == (3, 2)  # img-3, 4, 6
    assert sqlite["eval"] == sqlite["eval_again"]
    job = sqlite["job"]
    assert (job["state"], job["attempt"], job["fresh_labels"]) == ("deployed", 2, 3)
    assert job["incident_ids_json"] == '["inc-1", "inc-2"]'
    assert [j["state"] for j in sqlite["open"]] == ["waiting_for_labels"]
    assert sqlite["change_point"] == T0

    for name in sqlite:
        assert postgres[name] == sqlite[name], name
    assert postgres["change_point"].utcoffset() == timedelta(0)
