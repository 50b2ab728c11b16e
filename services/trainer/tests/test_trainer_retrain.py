"""The retraining loop over its real parts (database, blob store, subprocess runner): labels are
waited for and asked for once, a wait times out with its counts, enough labels snapshot and
submit, a lost run is retried (or found registered) after a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.db import make_engine
from defectloop.common.events import DegradationKind, LabelsRequested, MetricDegraded
from defectloop.trainer.jobs import JobState, JobStore, labels_request_id_for, model_version_for
from defectloop.trainer.retrain import Retrainer
from defectloop.trainer.runner import SPEC_FILE, LocalProcessRunner, TrainingSpec
from defectloop.trainer.settings import TrainerSettings

pytestmark = pytest.mark.unit

CHANGE = datetime.now(UTC) - timedelta(hours=1)


def incident(site: str, incident_id: str = "inc-1") -> MetricDegraded:
    return MetricDegraded(
        site_id=site,
        incident_id=incident_id,
        kind=DegradationKind.PERFORMANCE,
        metric="recall",
        value=0.4,
        baseline=0.92,
        threshold=0.87,
        window_start=CHANGE,
        window_end=CHANGE,
        sample_size=80,
        change_point_at=CHANGE,
    )


class Harness:
    def __init__(self, tmp: Path, *, python: str | None = None, **policy: Any) -> None:
        self.settings = TrainerSettings(
            database_url=f"sqlite:///{tmp / 'trainer.db'}",
            blob_url=(tmp / "blobs").as_uri(),
            work_dir=tmp / "work",
            train_preset="tiny",
            retrain_policy={
                "min_fresh_labels": 8,
                "min_fresh_defective": 2,
                "min_eval_defective": 0,
                **policy,
            },
        )
        self.store = JobStore(
            make_engine(self.settings.resolved_database_url(), create_tables=False)
        )
        self.blobs = LocalBlobStore(tmp / "blobs")
        self.requests: list[LabelsRequested] = []
        runner_args = {"python": python} if python else {}
        self.runner = LocalProcessRunner(tmp / "work" / "runs", **runner_args)

    async def publish(self, event: LabelsRequested) -> None:
        self.requests.append(event)

    def retrainer(self) -> Retrainer:
        return Retrainer(self.settings, self.store, self.runner, self.blobs, self.publish)

    def label(
        self,
        make: Callable[..., list[tuple[Any, Any]]],
        site: str,
        n: int,
        at: datetime,
        seed: int = 0,
    ) -> None:
        for captured, annotation in make(self.blobs, site, n, at, seed=seed, profile="B"):
            self.store.record_image(captured)
            self.store.record_annotation(annotation)


async def test_a_short_job_asks_for_labels_once_and_keeps_waiting(
    tmp_path: Path, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> None:
    h = Harness(tmp_path)
    retrainer = h.retrainer()
    job = (await retrainer.on_incident(incident("B"))).job
    h.label(sim_labelled, "B", 3, CHANGE + timedelta(minutes=1))
    await retrainer.tick()
    await retrainer.tick()
    assert [r.request_id for r in h.requests] == [labels_request_id_for(job.job_id)]
    request = h.requests[0]
    assert (request.site_id, request.incident_id, request.reason) == ("B", "inc-1", "incident")
    assert request.target_labels == 8
    assert request.requested_by == "trainer"
    stored = h.store.get(job.job_id)
    assert stored.job_state == JobState.WAITING_FOR_LABELS
    assert stored.fresh_labels == 3
    assert "3 fresh labels" in stored.reason


async def test_a_wait_past_its_deadline_times_out_with_the_counts(
    tmp_path: Path, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> None:
    h = Harness(tmp_path, label_wait_timeout_s=0.001)
    retrainer = h.retrainer()
    job = (await retrainer.on_incident(incident("B"))).job
    h.label(sim_labelled, "B", 2, CHANGE + timedelta(minutes=1))
    await retrainer.tick()
    stored = h.store.get(job.job_id)
    assert stored.job_state == JobState.TIMED_OUT
    assert stored.fresh_labels == 2
    assert "only 2 fresh labels" in stored.reason
    assert "8 (2 defective)" in stored.reason


async def test_enough_fresh_labels_snapshot_and_submit_training(
    tmp_path: Path, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> None:
    h = Harness(tmp_path, python="/bin/true")  # the run itself is the runner tests' business
    retrainer = h.retrainer()
    h.label(sim_labelled, "B", 6, CHANGE - timedelta(minutes=30))  # before: replay pool
    job = (await retrainer.on_incident(incident("B"))).job
    h.label(sim_labelled, "B", 24, CHANGE + timedelta(minutes=1), seed=1)
    await retrainer.tick()
    stored = h.store.get(job.job_id)
    assert stored.job_state == JobState.TRAINING
    assert h.requests == []  # enough at the first look: nothing asked
    assert stored.snapshot_sha256 is not None
    assert stored.candidate_version == model_version_for(job.job_id, "B", 1)
    assert stored.detail["dataset"]["train_fresh"] > 0
    spec = TrainingSpec.model_validate_json((Path(stored.run_handle or "") / SPEC_FILE).read_text())
    assert spec.snapshot_sha256 == stored.snapshot_sha256
    assert spec.model_version == stored.candidate_version
    train_dir = Path(spec.dataset_dirs[0])
    names = {
        i["image_id"] for i in json.loads((train_dir / "annotations.json").read_text())["images"]
    }
    assert (
        len(names)
        == stored.detail["dataset"]["train_fresh"] + stored.detail["dataset"]["train_replay"]
    )


async def test_a_lost_run_is_retried_from_the_same_snapshot_after_a_restart(
    tmp_path: Path, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> None:
    h = Harness(tmp_path, python="/bin/false")  # every run dies without a verdict
    job = (await h.retrainer().on_incident(incident("B"))).job
    h.label(sim_labelled, "B", 12, CHANGE + timedelta(minutes=1))
    await h.retrainer().tick()
    first = h.store.get(job.job_id)
    assert first.job_state == JobState.TRAINING
    # A new trainer process: it finds the run lost and starts attempt 2 on the same snapshot.
    await h.retrainer().tick()
    second = h.store.get(job.job_id)
    assert (second.job_state, second.attempt) == (JobState.TRAINING, 2)
    assert second.snapshot_sha256 == first.snapshot_sha256
    assert second.candidate_version == model_version_for(job.job_id, "B", 2)
    # Attempts are bounded (2 by default): the next loss fails the job with its reason.
    await h.retrainer().tick()
    final = h.store.get(job.job_id)
    assert final.job_state == JobState.FAILED
    assert "without a result" in final.reason
