"""What `models why` reads that the registry did not keep before: the run's provenance (git dirty
flag, job, snapshot), and the chain of versions no retraining job made (the full chain of a
retrained version is tested through the CLI: tools/cli/tests/test_cli_why.py)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    DegradationKind,
    ImageCaptured,
    MetricDegraded,
    QualityMetrics,
)
from defectloop.testing.net import free_port
from defectloop.trainer.explain import CHAIN, MonitorReader, explain
from defectloop.trainer.jobs import JobState, JobStore, RetrainPolicy
from defectloop.trainer.lineage import git_dirty
from defectloop.trainer.registry import (
    DatasetVersion,
    ModelVersion,
    Registry,
    RunProvenance,
    TrainingRun,
)

pytestmark = pytest.mark.unit


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def test_git_dirty_tells_a_modified_tree_from_a_clean_one(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", "code.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (repo / "untracked.txt").write_text("not code")  # untracked files do not make it dirty

    assert git_dirty(repo) is False
    (repo / "code.py").write_text("x = 2\n")
    assert git_dirty(repo) is True
    outside = tmp_path / "plain"
    outside.mkdir()
    assert git_dirty(outside) is None


def _registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'trainer.db'}")


def _fine_tuned(reg: Registry, provenance: RunProvenance | None) -> ModelVersion:
    reg.upsert_dataset(
        DatasetVersion(
            version="d" * 64, site="A", num_images=3, num_train=2, num_val=1, manifest_json="{}"
        )
    )
    for version, parent in (("v0", None), ("v1", "v0")):
        run = reg.add_run(
            TrainingRun(
                dataset_version="d" * 64,
                dataset_dirs_json="[]",
                site="A",
                preset="quick",
                config_json="{}",
                config_sha256="c" * 64,
                seed=7,
                parent_version=parent,
                git_commit="abc",
                lockfile_sha256="l" * 64,
            ),
            provenance=provenance if version == "v1" else None,
        )
        model = reg.add_model(
            ModelVersion(
                version=version,
                name="det",
                training_run_id=run.id,
                dataset_version="d" * 64,
                parent_version=parent,
                site="A",
                git_commit="abc",
                lockfile_sha256="l" * 64,
                config_sha256="c" * 64,
                seed=7,
                sha256=version * 32,
                bundle_path="/b",
                author="alice",
            )
        )
    return model


def test_a_run_records_its_provenance_with_it(tmp_path: Path) -> None:
    model = _fine_tuned(
        _registry(tmp_path), RunProvenance(git_dirty=True, job_id="job-9", snapshot_sha256="s" * 64)
    )

    again = _registry(tmp_path)  # a fresh engine on the same file
    with again.session() as s:
        row = s.get(RunProvenance, model.training_run_id)
    assert row is not None
    assert (row.git_dirty, row.job_id, row.snapshot_sha256) == (True, "job-9", "s" * 64)


def test_a_hand_fine_tuned_version_says_why_its_links_are_missing(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    _fine_tuned(reg, RunProvenance(git_dirty=False))
    unreachable = MonitorReader(f"http://127.0.0.1:{free_port()}")

    chain = explain("v1", registry=reg, jobs=JobStore(reg.engine), monitor=unreachable)

    assert [link.name for link in chain.links] == list(CHAIN)
    assert chain.job_id is None
    assert "fine-tuned by hand from v0" in (chain.link("incident").missing or "")
    assert chain.link("gates").missing is not None
    assert chain.link("approval").missing == "not promoted"
    run = chain.link("run").facts
    assert (run["git_dirty"], run["parent_version"], run["parent_sha256"]) == (
        False,
        "v0",
        "v0" * 32,
    )
    # A version without provenance (recorded before it existed): said, not guessed.
    older = explain("v0", registry=reg, jobs=JobStore(reg.engine), monitor=unreachable)
    assert older.link("run").facts["git_dirty"] is None
    assert any("dirty flag not recorded" in n for n in older.link("run").notes)
    assert "bootstrap model" in (older.link("incident").missing or "")


def test_explain_loads_neither_torch_nor_opencv() -> None:
    code = (
        "import sys, defectloop.trainer.explain; "
        "print(sorted(m for m in ('torch', 'cv2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_the_snapshot_the_chain_uses_the_job_and_the_labels_as_they_are(
    tmp_path: Path,
) -> None:
    reg = _registry(tmp_path)
    jobs = JobStore(reg.engine)
    t0 = datetime(2026, 11, 1, 12, tzinfo=UTC)
    job = jobs.on_incident(
        MetricDegraded(
            site_id="A",
            incident_id="inc-7",
            kind=DegradationKind.PERFORMANCE,
            metric="recall",
            value=0.5,
            baseline=0.9,
            threshold=0.85,
            window_start=t0,
            window_end=t0 + timedelta(minutes=5),
            sample_size=60,
            change_point_at=t0,
        ),
        RetrainPolicy(),
    ).job
    for i, (who, at) in enumerate(
        [
            ("ann1", t0 + timedelta(seconds=1)),
            ("ann2", t0 + timedelta(seconds=2)),
            ("ann3", t0 - timedelta(hours=1)),
        ]  # before the change point: not fresh
    ):
        jobs.record_image(
            ImageCaptured(
                site_id="A",
                camera_id="c",
                image_id=f"i{i}",
                sha256="0" * 64,
                blob_uri="file:///x.png",
                captured_at=at,
                width=8,
                height=8,
                quality=QualityMetrics(sharpness=1.0, brightness=1.0, contrast=1.0, uniform=False),
            )
        )
        jobs.record_annotation(
            AnnotationCompleted(
                site_id="A",
                camera_id="c",
                image_id=f"i{i}",
                annotation_id=f"a{i}",
                annotator=who,
                status=AnnotationStatus.COMPLETED,
                boxes=(),
                sampling_reason="random",
                lead_time_s=1.0,
                occurred_at=at,
            )
        )
    _fine_tuned(reg, None)
    jobs.update(job.job_id, to=JobState.SNAPSHOTTING, fresh_labels=2)
    jobs.update(job.job_id, to=JobState.TRAINING, snapshot_sha256="f" * 64, candidate_version="v1")

    chain = explain("v1", registry=reg, jobs=jobs, blobs=None, monitor=MonitorReader(None))

    assert chain.job_id == job.job_id
    incident = chain.link("incident").facts
    assert (incident["metric"], incident["value"], incident["threshold"]) == ("recall", 0.5, 0.85)
    assert incident["window_start"] == t0.isoformat()
    assert chain.link("labels").facts["annotators"] == {"ann1": 1, "ann2": 1}
    assert chain.link("dataset").facts["snapshot_sha256"] == "f" * 64
    assert chain.link("dataset").notes == ["snapshot manifest not read (no blob store)"]
