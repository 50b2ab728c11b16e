"""The trainer service on the real broker: a data-quality incident opens no job; a performance
incident opens one job that asks for labels; enough captures + labels move it to training."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.db import make_engine
from defectloop.common.events import DegradationKind, LabelsRequested, MetricDegraded
from defectloop.common.kafka import build_broker, publish_event, publish_events
from defectloop.testing.kafka import collect, started_broker
from defectloop.testing.net import free_port, wait_until
from defectloop.trainer.jobs import Job, JobState, JobStore, labels_request_id_for
from defectloop.trainer.main import build_app
from defectloop.trainer.registry import Registry
from defectloop.trainer.retrain import Retrainer
from defectloop.trainer.runner import SPEC_FILE, TrainingSpec
from defectloop.trainer.settings import TrainerSettings


def incident(site: str, kind: DegradationKind, incident_id: str, at: datetime) -> MetricDegraded:
    return MetricDegraded(
        site_id=site,
        incident_id=incident_id,
        kind=kind,
        metric="recall",
        value=0.4,
        baseline=0.92,
        threshold=0.87,
        window_start=at,
        window_end=at + timedelta(minutes=5),
        sample_size=80,
        change_point_at=at,
        camera_id="cam-1" if kind == "data_quality" else None,
    )


@pytest.mark.integration
async def test_incidents_over_kafka_open_one_job_that_waits_asks_and_trains(
    kafka_bootstrap: str, tmp_path: Path, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> None:
    site = "t" + uuid.uuid4().hex[:10]
    settings = TrainerSettings(
        kafka_bootstrap=kafka_bootstrap,
        port=free_port(),
        database_url=f"sqlite:///{tmp_path / 'trainer.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        work_dir=tmp_path / "work",
        train_preset="tiny",
        retrain_policy={"min_fresh_labels": 12, "min_fresh_defective": 3, "min_eval_defective": 0},
        only_sites=[site],
        job_tick_s=0.5,
        log_format="console",
    )
    app = build_app(
        settings,
        broker=build_broker(kafka_bootstrap, client_id="trainer-test"),
        group_id=f"trainer-{site}",
    )
    retrainer: Retrainer = app.state.retrainer
    change = datetime.now(UTC) - timedelta(hours=1)

    async def jobs_where(predicate: Callable[[list[Job]], bool]) -> list[Job] | None:
        jobs = retrainer.store.jobs(site)
        return jobs if predicate(jobs) else None

    handle: str | None = None
    async with (
        started_broker(kafka_bootstrap, client_id="trainer-test-producer") as producer,
        collect(
            kafka_bootstrap,
            topics.LABELS_REQUESTED,
            where=lambda e: isinstance(e, LabelsRequested) and e.site_id == site,
        ) as requests,
        app.router.lifespan_context(app),
    ):
        try:
            await publish_event(
                producer, incident(site, DegradationKind.DATA_QUALITY, "dq-1", change)
            )
            [ignored] = await wait_until(
                lambda: jobs_where(lambda jobs: len(jobs) == 1), what="the data-quality record"
            )
            assert ignored.job_state == JobState.IGNORED
            assert "data_quality" in ignored.reason
            assert retrainer.store.open_jobs() == []

            await publish_event(
                producer, incident(site, DegradationKind.PERFORMANCE, "perf-1", change)
            )
            await publish_event(
                producer, incident(site, DegradationKind.PERFORMANCE, "perf-2", change)
            )
            await requests.wait_for(lambda items: len(items) >= 1)
            jobs = await wait_until(
                lambda: jobs_where(
                    lambda js: any(j.incident_ids == ["perf-1", "perf-2"] for j in js)
                ),
                what="one job holding both performance incidents",
            )
            [job] = [j for j in jobs if j.kind == "performance"]
            assert job.job_state == JobState.WAITING_FOR_LABELS
            assert requests.items[0].request_id == labels_request_id_for(job.job_id)
            assert requests.items[0].incident_id == "perf-1"

            # Labels first (they may overtake their captures), then the captures.
            pairs = sim_labelled(
                LocalBlobStore(tmp_path / "blobs"),
                site,
                24,
                change + timedelta(minutes=1),
                profile="B",
            )
            await publish_events(producer, [label for _, label in pairs])
            await publish_events(producer, [captured for captured, _ in pairs])

            async def training() -> Job | None:
                current = retrainer.store.get(job.job_id)
                return (
                    current if current.job_state in (JobState.TRAINING, JobState.GATING) else None
                )

            trained = await wait_until(training, timeout_s=120, what="the job to start training")
            handle = trained.run_handle
            assert trained.fresh_labels >= 12
            assert trained.snapshot_sha256 is not None
            spec = TrainingSpec.model_validate_json((Path(handle or "") / SPEC_FILE).read_text())
            assert (spec.site_id, spec.snapshot_sha256) == (site, trained.snapshot_sha256)
            assert [r.request_id for r in requests.items] == [labels_request_id_for(job.job_id)]
            assert [j.job_id for j in retrainer.store.jobs(site) if j.kind == "performance"] == [
                job.job_id
            ]
        finally:
            if handle is not None:  # the full training run is the runner tests' (slow) business
                retrainer.runner.cancel(handle)


@pytest.mark.integration
@pytest.mark.slow
async def test_a_trainer_killed_mid_training_resumes_the_run_and_registers_one_version(
    kafka_bootstrap: str, tmp_path: Path, sim_labelled: Callable[..., list[tuple[Any, Any]]]
) -> None:
    site = "k" + uuid.uuid4().hex[:10]
    db_url = f"sqlite:///{tmp_path / 'trainer.db'}"
    env = {
        **os.environ,
        "DEFECTLOOP_TRAINER_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "DEFECTLOOP_TRAINER_DATABASE_URL": db_url,
        "DEFECTLOOP_TRAINER_BLOB_URL": (tmp_path / "blobs").as_uri(),
        "DEFECTLOOP_TRAINER_WORK_DIR": str(tmp_path / "work"),
        "DEFECTLOOP_TRAINER_TRAIN_PRESET": "tiny",
        "DEFECTLOOP_TRAINER_RETRAIN_POLICY": '{"min_fresh_labels": 12, "min_fresh_defective": 3, "min_eval_defective": 0}',
        "DEFECTLOOP_TRAINER_ONLY_SITES": json.dumps([site]),
        "DEFECTLOOP_TRAINER_CONSUMER_GROUP": f"trainer-{site}",
        "DEFECTLOOP_TRAINER_JOB_TICK_S": "0.5",
        "DEFECTLOOP_TRAINER_LOG_FORMAT": "json",
    }
    store = JobStore(make_engine(db_url, create_tables=False))
    change = datetime.now(UTC) - timedelta(hours=1)

    def start() -> subprocess.Popen[bytes]:
        env["DEFECTLOOP_TRAINER_PORT"] = str(free_port())
        with (tmp_path / "trainer.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "defectloop.trainer.main"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    async def job_in(*states: JobState) -> Job | None:
        jobs = [j for j in store.jobs(site) if j.job_state in states]
        return jobs[0] if jobs else None

    trainer = start()
    try:
        async with started_broker(kafka_bootstrap, client_id="trainer-kill-producer") as producer:
            await publish_event(
                producer, incident(site, DegradationKind.PERFORMANCE, "perf-1", change)
            )
            pairs = sim_labelled(
                LocalBlobStore(tmp_path / "blobs"),
                site,
                24,
                change + timedelta(minutes=1),
                profile="B",
            )
            await publish_events(producer, [captured for captured, _ in pairs])
            await publish_events(producer, [label for _, label in pairs])
            training = await wait_until(
                lambda: job_in(JobState.TRAINING), timeout_s=180, what="training to start"
            )
        trainer.send_signal(signal.SIGKILL)
        await asyncio.to_thread(trainer.wait)
        trainer = start()
        # The site has no champion to gate against: gating ends it (gate_failed) right away.
        gating = await wait_until(
            lambda: job_in(JobState.GATING, JobState.GATE_FAILED),
            timeout_s=480,
            interval_s=1.0,
            what="the trained job",
        )
    finally:
        trainer.terminate()
        await asyncio.to_thread(trainer.wait)
    # Resumed, not restarted: the first attempt's run finished and is the only version.
    assert gating.job_id == training.job_id
    assert (gating.attempt, gating.candidate_version) == (1, training.candidate_version)
    registry = Registry(db_url)
    try:
        versions = [m.version for m in registry.list_models(site=site)]
    finally:
        registry.dispose()
    assert versions == [training.candidate_version]
    runs = sorted(p.name for p in (tmp_path / "work" / "runs" / training.job_id).iterdir())
    assert runs == ["a1"]
