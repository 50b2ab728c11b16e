"""Train → register → track, and reproduce a registered version from its record.

The orchestration the CLI (and later the retrain handler) calls; each step is a plain function of
its own module.
"""

from __future__ import annotations

import getpass
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from defectloop.common.errors import NotFoundError
from defectloop.trainer.config import TrainerConfig, resolve_config, validate_config
from defectloop.trainer.registry import (
    DatasetVersion,
    ModelVersion,
    Registry,
    RunProvenance,
    TrainingRun,
    model_version_from_manifest,
)
from defectloop.trainer.train import ProgressSink, TrainResult

# Metrics that depend on wall-clock time, not on the weights: left out of reproduction checks.
_TIMING_METRICS = frozenset({"train_seconds"})


def current_author() -> str:
    env = os.environ.get("DEFECTLOOP_USER")
    if env:
        return env
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user database entry (containers)
        return "unknown"


@dataclass
class TrainOutcome:
    result: TrainResult
    model: ModelVersion
    run: TrainingRun
    mlflow_run_id: str | None


def train_and_register(
    dataset_dirs: Sequence[Path],
    *,
    preset: str,
    seed: int,
    out_dir: Path,
    site: str | None = None,
    parent_bundle: Path | None = None,
    overrides: Path | dict[str, Any] | None = None,
    registry: Registry | None = None,
    progress: ProgressSink | None = None,
    track: bool = True,
    config: TrainerConfig | None = None,
    version: str | None = None,
    job_id: str | None = None,
    snapshot_sha256: str | None = None,
) -> TrainOutcome:
    """Resolve the config, train, write the bundle, register it with lineage, log to MLflow."""
    from defectloop.trainer.lineage import git_dirty
    from defectloop.trainer.train import train

    cfg = config or resolve_config(preset, site=site, overrides=overrides)
    started = datetime.now(UTC)
    dirty = git_dirty()  # before training: the tree the run starts from
    registry = registry or Registry()
    result = train(
        dataset_dirs,
        cfg,
        seed=seed,
        version=version,
        out_dir=out_dir,
        site=site,
        parent_bundle=parent_bundle,
        progress=progress,
        parent_sha256=_parent_digest(registry, parent_bundle),
    )
    manifest = result.manifest
    lineage = manifest.lineage
    dirs = [str(Path(d).resolve()) for d in dataset_dirs]
    registry.upsert_dataset(
        DatasetVersion(
            version=lineage.dataset_version,
            site=site,
            num_images=result.dataset_manifest["num_images"],
            num_train=result.dataset_manifest["num_train"],
            num_val=result.dataset_manifest["num_val"],
            manifest_json=json.dumps(result.dataset_manifest, sort_keys=True),
            sources_json=json.dumps(dirs),
        )
    )
    run = registry.add_run(
        TrainingRun(
            dataset_version=lineage.dataset_version,
            dataset_dirs_json=json.dumps(dirs),
            site=site,
            preset=preset,
            config_json=json.dumps(lineage.config, sort_keys=True),
            config_sha256=lineage.config_sha256,
            seed=seed,
            parent_version=lineage.parent,
            git_commit=lineage.git_commit,
            lockfile_sha256=lineage.lockfile_sha256,
            train_seconds=result.train_seconds,
            started_at=started,
            finished_at=datetime.now(UTC),
        ),
        provenance=RunProvenance(git_dirty=dirty, job_id=job_id, snapshot_sha256=snapshot_sha256),
    )
    model = registry.add_model(
        model_version_from_manifest(
            manifest,
            bundle_dir=Path(out_dir),
            site=site,
            author=current_author(),
            training_run_id=run.id,
        )
    )
    mlflow_id = None
    if track:
        from defectloop.trainer.tracking import log_training

        mlflow_id = log_training(
            config=lineage.config,
            params={
                "seed": seed,
                "preset": preset,
                "site": site,
                "parent": lineage.parent,
                "dataset_dirs": ",".join(dirs),
            },
            epoch_metrics=[
                {
                    "loss": h.loss,
                    "heatmap_loss": h.heatmap_loss,
                    "size_loss": h.size_loss,
                    "offset_loss": h.offset_loss,
                    "lr": h.lr,
                    "epoch_seconds": h.seconds,
                }
                for h in result.history
            ],
            metrics=manifest.metrics,
            tags={
                "model_version": manifest.version,
                "dataset_version": lineage.dataset_version,
                "git_commit": lineage.git_commit,
                "config_sha256": lineage.config_sha256,
                "onnx_sha256": manifest.sha256,
                "site": site or "",
            },
            bundle_dir=Path(out_dir),
            run_name=manifest.version,
        )
        if mlflow_id is not None:
            with registry.session() as s:
                stored = s.get(TrainingRun, run.id)
                if stored is not None:
                    stored.mlflow_run_id = mlflow_id
                    s.add(stored)
                    s.commit()
    return TrainOutcome(result=result, model=model, run=run, mlflow_run_id=mlflow_id)


def _parent_digest(registry: Registry, parent_bundle: Path | None) -> str | None:
    from defectloop.trainer.checkpoints import expected_parent_digest

    return None if parent_bundle is None else expected_parent_digest(registry, parent_bundle)


@dataclass
class ReproduceReport:
    version: str
    new_bundle: Path
    identical: bool
    recorded_sha256: str
    new_sha256: str
    recorded_metrics: dict[str, float]
    new_metrics: dict[str, float]

    @property
    def metrics_equal(self) -> bool:
        keys = (set(self.recorded_metrics) | set(self.new_metrics)) - _TIMING_METRICS
        return all(self.recorded_metrics.get(k) == self.new_metrics.get(k) for k in keys)


def reproduce(
    version: str,
    out_dir: Path,
    *,
    registry: Registry | None = None,
    progress: ProgressSink | None = None,
) -> ReproduceReport:
    """Retrain a registered version from its recorded dataset, config, seed and parent."""
    from defectloop.trainer.lineage import verified_dataset
    from defectloop.trainer.train import train

    registry = registry or Registry()
    model = registry.get_model(version)
    if model.training_run_id is None:
        raise NotFoundError(f"model version {version} has no recorded training run")
    run = registry.get_run(model.training_run_id)
    cfg = validate_config(run.config, source=f"recorded config of {version}")
    dirs = [Path(d) for d in run.dataset_dirs]
    missing = [str(d) for d in dirs if not d.is_dir()]
    if missing:
        raise NotFoundError(
            f"dataset dir(s) of {version} no longer exist: {', '.join(missing)}",
            hint="restore the dataset from its snapshot; its version is " + model.dataset_version,
        )
    verified_dataset(
        dirs,
        cfg.labels,
        site=run.site,
        val_fraction=cfg.train.val_fraction,
        expected=model.dataset_version,
        what=f"the dataset of {version} changed",
        reason="dataset_changed",
        hint="an image or an annotation was added, removed or modified since training; "
        "restore the original dataset to reproduce",
    )
    parent_bundle = None
    if run.parent_version is not None:
        parent_bundle = Path(registry.get_model(run.parent_version).bundle_path)
    result = train(
        dirs,
        cfg,
        seed=run.seed,
        out_dir=out_dir,
        site=run.site,
        parent_bundle=parent_bundle,
        progress=progress,
        parent_sha256=_parent_digest(registry, parent_bundle),
    )
    return ReproduceReport(
        version=version,
        new_bundle=Path(out_dir),
        identical=result.manifest.sha256 == model.sha256,
        recorded_sha256=model.sha256,
        new_sha256=result.manifest.sha256,
        recorded_metrics=model.metrics,
        new_metrics=result.manifest.metrics,
    )
