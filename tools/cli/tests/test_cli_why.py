"""`defectloop models why` and `models jobs` through typer's CliRunner, on rows inserted into a
real SQLite registry + job store (no training) and a real monitor API over a real store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from typer.testing import CliRunner

from defectloop.cli.app import build_cli
from defectloop.common.blobstore import open_blob_store
from defectloop.common.db import make_engine
from defectloop.common.errors import ForbiddenError
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
    sha256_hex,
)
from defectloop.common.http_errors import install_error_handlers
from defectloop.testing.events import prediction
from defectloop.testing.http import serve_in_thread
from defectloop.testing.net import free_port
from defectloop.testing.state import isolate_state
from defectloop.trainer import routes
from defectloop.trainer.gates import GateConfig, Latency, SiteEval, evaluate_gates
from defectloop.trainer.governance import FIRST_MODEL_APPROVER, Governance
from defectloop.trainer.jobs import JobState, JobStore, RetrainPolicy, model_version_for
from defectloop.trainer.registry import (
    DatasetVersion,
    ModelVersion,
    Registry,
    RunProvenance,
    TrainingRun,
)
from defectloop.trainer.settings import TrainerSettings
from defectloop.trainer.snapshot import build_manifest, store_manifest

pytestmark = pytest.mark.unit

SITE = "whyB"
T0 = datetime.now(UTC) - timedelta(hours=2)
PARENT = "boot-whyB"
LABELS = ["scratch", "spot", "crack"]


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLUMNS", "240")
    monkeypatch.setenv("DEFECTLOOP_TRAINER_URL", f"http://127.0.0.1:{free_port()}")
    return isolate_state(monkeypatch, tmp_path)


@dataclass
class Chain:
    version: str
    job_id: str
    snapshot: str
    parent_sha256: str


def _image(site: str, i: int, at: datetime, blobs: object) -> ImageCaptured:
    data = f"{site}-{i}".encode()
    return ImageCaptured(
        site_id=site,
        camera_id="cam-1",
        image_id=f"{site}-img-{i}",
        sha256=sha256_hex(data),
        blob_uri=blobs.put(data, suffix=".png"),  # type: ignore[attr-defined]
        captured_at=at,
        width=64,
        height=64,
        quality=QualityMetrics(sharpness=50.0, brightness=120.0, contrast=20.0, uniform=False),
    )


def _annotation(
    site: str,
    image_id: str,
    annotation_id: str,
    annotator: str,
    defective: bool,
    *,
    lead_time_s: float,
    occurred_at: datetime,
) -> AnnotationCompleted:
    """A completed random-stratum label of camera ``cam-1`` (one scratch if ``defective``)."""
    return AnnotationCompleted(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id,
        annotation_id=annotation_id,
        annotator=annotator,
        status=AnnotationStatus.COMPLETED,
        boxes=(Box(label="scratch", x=1, y=1, w=5, h=5),) if defective else (),
        sampling_reason="random",
        lead_time_s=lead_time_s,
        occurred_at=occurred_at,
    )


def _label(image: ImageCaptured, annotator: str, defective: bool) -> AnnotationCompleted:
    return _annotation(
        image.site_id,
        image.image_id,
        f"ls-{image.image_id}",
        annotator,
        defective,
        lead_time_s=3.0,
        occurred_at=image.captured_at + timedelta(minutes=1),
    )


def _model(version: str, bundle: Path, **kw: object) -> ModelVersion:
    values: dict[str, object] = {
        "version": version,
        "name": "detector",
        "site": SITE,
        "git_commit": "c0ffee" * 6,
        "lockfile_sha256": "1" * 64,
        "config_sha256": "2" * 64,
        "seed": 0,
        "sha256": sha256_hex(version.encode()),
        "bundle_path": str(bundle),
        "author": "alice",
    }
    return ModelVersion.model_validate({**values, **kw})


def _dataset(version: str, *, images: int, train: int, val: int) -> DatasetVersion:
    return DatasetVersion(
        version=version,
        site=SITE,
        num_images=images,
        num_train=train,
        num_val=val,
        manifest_json="{}",
    )


def build_chain(home: Path) -> Chain:
    """Every link of a retrained version, as the trainer records them (the training itself left
    out: its rows are inserted)."""
    settings = TrainerSettings()
    registry = Registry()
    jobs = JobStore(registry.engine)
    blobs = open_blob_store(settings.blob_url)
    published: list[ModelDeployed] = []
    gov = Governance(registry, publish=published.extend)  # the publish itself is not under test
    try:
        boot_bundle = home / "bundles" / PARENT
        boot_bundle.mkdir(parents=True)
        (boot_bundle / "checkpoint.pt").write_bytes(b"parent weights")
        registry.upsert_dataset(_dataset("d" * 64, images=10, train=8, val=2))
        parent = registry.add_model(_model(PARENT, boot_bundle, dataset_version="d" * 64))
        gov.activate(
            parent,
            SITE,
            ModelRole.CHAMPION,
            by="alice",
            approved_by=FIRST_MODEL_APPROVER,
            reason="first model",
        )
        job = jobs.on_incident(
            MetricDegraded(
                site_id=SITE,
                incident_id="inc-why-1",
                kind=DegradationKind.PERFORMANCE,
                model_version=PARENT,
                metric="recall",
                value=0.41,
                baseline=0.92,
                threshold=0.87,
                window_start=T0,
                window_end=T0 + timedelta(minutes=5),
                sample_size=80,
                ci_low=0.30,
                ci_high=0.53,
                n_positive=29,
                change_point_at=T0,
            ),
            RetrainPolicy(),
        ).job
        for i in range(30):  # fresh: after the change point, two annotators
            image = _image(SITE, i, T0 + timedelta(seconds=i), blobs)
            jobs.record_image(image)
            jobs.record_annotation(_label(image, "ann1" if i % 3 else "ann2", i % 2 == 0))
        for i in range(20):  # earlier data of another site: the replay pool
            image = _image("whyA", i, T0 - timedelta(hours=1, seconds=i), blobs)
            jobs.record_image(image)
            jobs.record_annotation(_label(image, "ann9", i % 2 == 0))
        labelled = jobs.labelled_images()
        manifest = build_manifest(
            site_id=SITE,
            job_id=job.job_id,
            change_point_at=T0,
            labelled=labelled,
            eval_ids=jobs.eval_assignment(labelled, 0.25),
            labels=LABELS,
            replay_share=0.5,
            seed=0,
        )
        digest = store_manifest(manifest, blobs)
        version = model_version_for(job.job_id, SITE, 1)
        jobs.update(job.job_id, to=JobState.SNAPSHOTTING, fresh_labels=30, fresh_defective=15)
        jobs.update(
            job.job_id,
            to=JobState.TRAINING,
            snapshot_sha256=digest,
            candidate_version=version,
            detail_json=json.dumps({**job.detail, "dataset": manifest.counts()}),
        )
        registry.upsert_dataset(_dataset("e" * 64, images=40, train=32, val=8))
        run = registry.add_run(
            TrainingRun(
                dataset_version="e" * 64,
                dataset_dirs_json="[]",
                site=SITE,
                preset="quick",
                config_json="{}",
                config_sha256="2" * 64,
                seed=0,
                parent_version=PARENT,
                git_commit="c0ffee" * 6,
                lockfile_sha256="1" * 64,
                mlflow_run_id="mlf-run-77",
                train_seconds=144.0,
            ),
            provenance=RunProvenance(git_dirty=True, job_id=job.job_id, snapshot_sha256=digest),
        )
        bundle = home / "bundles" / version
        bundle.mkdir(parents=True)
        registry.add_model(
            _model(
                version,
                bundle,
                dataset_version="e" * 64,
                training_run_id=run.id,
                parent_version=PARENT,
                author="trainer",
            )
        )
        jobs.update(job.job_id, to=JobState.GATING)
        truth = [True] * 12 + [False] * 6
        gov.record_gate(
            evaluate_gates(
                candidate_version=version,
                champion_version=PARENT,
                degraded=SiteEval(
                    site=SITE,
                    truth=truth,
                    champion=[False] * 18,
                    candidate=truth,
                    champion_map50=0.31,
                    candidate_map50=0.84,
                ),
                others=[SiteEval(site="whyA", truth=truth, champion=truth, candidate=truth)],
                parity={"heatmap": 2e-6},
                latency=Latency(champion_ms=2.0, candidate_ms=2.1),
                config=GateConfig(n_resamples=200),
            ),
            by="trainer",
        )
        gov.shadow(version, by="trainer")
        scorecard = {
            "verdict": "better",
            "n_pairs": 64,
            "n_positive": 31,
            "mcnemar_p": 0.004,
            "recall": {"champion": 0.45, "candidate": 0.9},
        }
        jobs.update(
            job.job_id,
            to=JobState.SHADOW,
            detail_json=json.dumps({**jobs.get(job.job_id).detail, "scorecard": scorecard}),
        )
        with pytest.raises(ForbiddenError):
            gov.approve(version, "trainer")  # its author: refused, and recorded
        gov.approve(version, "bob", reason="scorecard better")
        gov.promote(version, "bob")
        return Chain(version, job.job_id, digest, parent.sha256)
    finally:
        registry.dispose()


def _monitor_events(version: str) -> list[object]:
    """The promoted version serving the site: 40 labelled predictions, 10 doubly annotated."""
    out: list[object] = [
        ModelDeployed(
            site_id=SITE,
            role=ModelRole.CHAMPION,
            model_name="detector",
            model_version=version,
            artifact_uri="file:///b",
            sha256="0" * 64,
            baseline_metrics={"recall": 0.9},
            occurred_at=T0,
        )
    ]
    for i in range(40):
        defective = i % 2 == 0
        image_id = f"mon-{i}"
        at = T0 + timedelta(minutes=10, seconds=i)
        out.append(
            prediction(
                SITE,
                image_id,
                version=version,
                defective=defective and i % 10 != 0,
                decision_score=0.9 if defective else 0.1,
                model_name="detector",
                captured_at=at,
            )
        )
        for who in ("ann1", "ann2") if i < 10 else ("ann1",):
            out.append(
                _annotation(
                    SITE,
                    image_id,
                    f"m-{who}-{i}",
                    who,
                    defective,
                    lead_time_s=1,
                    occurred_at=at + timedelta(seconds=30),
                )
            )
    return out


def _serve(app: FastAPI) -> Iterator[str]:
    with serve_in_thread(app) as url:
        yield url


@pytest.fixture
def chain(isolated_home: Path) -> Chain:
    return build_chain(isolated_home)


@pytest.fixture
def monitor_url(chain: Chain, tmp_path: Path) -> Iterator[str]:
    from defectloop.monitor import api
    from defectloop.monitor.settings import MonitorSettings
    from defectloop.monitor.store import MonitorStore

    store = MonitorStore(make_engine(f"sqlite:///{tmp_path / 'monitor.db'}"))
    store.record_many(_monitor_events(chain.version))  # type: ignore[arg-type]
    app = FastAPI()
    install_error_handlers(app)
    api.install(app, store, MonitorSettings(database_url="sqlite://"))
    yield from _serve(app)


def _why(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(build_cli(), ["models", "why", *args])
    assert "Traceback" not in result.output
    return result.exit_code, result.output


def test_why_prints_every_link_of_a_retrained_version(chain: Chain, monitor_url: str) -> None:
    code, out = _why(chain.version, "--monitor-url", monitor_url)

    assert code == 0, out
    expected = [
        "inc-why-1",
        "recall 0.410 [0.30, 0.53] vs baseline 0.920",
        "n=80 (29 defective)",
        "30 fresh (15 defective), from: ann1 ",
        "ann2 ",
        "agreement: kappa",
        "on 10 overlap pairs",
        chain.snapshot[:12],
        "frozen eval sets:",
        "replay",
        "(dirty tree)",
        "MLflow run mlf-run-77",
        f"parent {PARENT} (onnx {chain.parent_sha256[:12]}",
        "passed",
        "McNemar",
        "whyA: Δrecall +0.000",
        "approved by bob",
        "refused",
        "author",
        "scorecard better on 64 paired labels",
        "as champion: recall",
        "over 40 labelled images",
    ]
    assert [e for e in expected if e not in out] == []


def test_why_json_has_every_link_and_no_missing_one(chain: Chain, monitor_url: str) -> None:
    code, out = _why(chain.version, "--json", "--monitor-url", monitor_url)

    assert code == 0, out
    body = json.loads(out)
    assert body["job_id"] == chain.job_id
    links = {link["name"]: link for link in body["links"]}
    assert list(links) == [
        "incident",
        "labels",
        "dataset",
        "run",
        "gates",
        "approval",
        "shadow",
        "after_promotion",
    ]
    assert {name: link["missing"] for name, link in links.items()} == dict.fromkeys(links)
    assert links["incident"]["facts"]["window_start"] == T0.isoformat()
    assert links["dataset"]["facts"]["snapshot_sha256"] == chain.snapshot
    assert links["run"]["facts"]["git_dirty"] is True
    assert links["gates"]["facts"]["passed"] is True
    assert links["approval"]["facts"]["approved_by"] == "bob"
    assert [r["by"] for r in links["approval"]["facts"]["refused"]] == ["trainer"]
    assert links["after_promotion"]["facts"]["recall"]["n"] > 0


def test_a_bootstrap_version_shows_its_missing_links_with_why(chain: Chain) -> None:
    code, out = _why(PARENT, "--monitor-url", f"http://127.0.0.1:{free_port()}")

    assert code == 0, out
    assert "— bootstrap model: no incident" in out
    assert "— no gate report: first model of its site" in out
    assert "— never in shadow" in out
    assert "monitor unreachable" in out  # promoted, but the monitor is away: said, not raised


def test_an_unknown_version_is_one_error_line_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from defectloop.cli.errors import run_cli

    monkeypatch.setattr("sys.argv", ["defectloop", "models", "why", "nope"])
    assert run_cli(build_cli()) == 1
    err = capsys.readouterr().err
    assert "model version nope not found" in err
    assert "hint:" in err
    assert "Traceback" not in err


def test_jobs_come_from_the_trainer_api(chain: Chain) -> None:
    registry = Registry()
    app = FastAPI()
    routes.install(app, JobStore(registry.engine))
    try:
        for url in _serve(app):
            result = CliRunner().invoke(build_cli(), ["models", "jobs", "--url", url, "--json"])
    finally:
        registry.dispose()

    assert result.exit_code == 0, result.output
    [job] = json.loads(result.output)
    assert (job["job_id"], job["site_id"], job["state"]) == (chain.job_id, SITE, "shadow")


def test_jobs_fall_back_to_the_database_when_the_trainer_is_not_running(chain: Chain) -> None:
    result = CliRunner().invoke(build_cli(), ["models", "jobs", "--site", SITE])

    assert result.exit_code == 0, result.output
    assert "trainer database; the service is not running" in result.output
    assert chain.job_id[:12] in result.output
    assert "shadow" in result.output
