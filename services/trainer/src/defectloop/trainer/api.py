"""The trainer's public door: what tools (the CLI, the local stack) may call.

Everything else in ``defectloop.trainer`` is the trainer's own business and may change; the import
contract (``.importlinter``) lets tools import this module only. Each function opens the model
registry (``DEFECTLOOP_TRAINER_DATABASE_URL`` or ``<state>/trainer.db``); its failures come out
as defectloop errors. :func:`train` (train, export to ONNX, write the bundle, register it) and
:func:`reproduce` (retrain a registered version from its record) load the training half on first
use; :func:`open_governance` (approve, promote, rollback, the audit log) is the trainer's own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from defectloop.common.events import ModelDeployed, ModelRole
from defectloop.trainer.config import available_presets
from defectloop.trainer.governance import AuditRecord, Governance, open_governance
from defectloop.trainer.registry import ModelVersion, Registry, TrainingRun

if TYPE_CHECKING:
    from defectloop.trainer.pipeline import ReproduceReport, TrainOutcome, reproduce
    from defectloop.trainer.pipeline import train_and_register as train
    from defectloop.trainer.train import EpochStats, ProgressSink

__all__ = [
    "AuditRecord",
    "EpochStats",
    "Governance",
    "ModelDetails",
    "ModelVersion",
    "ProgressSink",
    "ReproduceReport",
    "TrainOutcome",
    "TrainingRun",
    "active_champion",
    "available_presets",
    "config_files",
    "deploy",
    "get_model",
    "list_models",
    "open_governance",
    "reproduce",
    "train",
]

# The training half (numpy, OpenCV, the data pipeline; torch when it runs) is imported on first
# use, so listing models or governing them stays light (PEP 562 module __getattr__).
_TRAINING = {
    "train": ("defectloop.trainer.pipeline", "train_and_register"),
    "reproduce": ("defectloop.trainer.pipeline", "reproduce"),
    "TrainOutcome": ("defectloop.trainer.pipeline", "TrainOutcome"),
    "ReproduceReport": ("defectloop.trainer.pipeline", "ReproduceReport"),
    "EpochStats": ("defectloop.trainer.train", "EpochStats"),
    "ProgressSink": ("defectloop.trainer.train", "ProgressSink"),
}


def __getattr__(name: str) -> Any:
    if name not in _TRAINING:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _TRAINING[name]
    return getattr(importlib.import_module(module), attribute)


@dataclass(frozen=True)
class ModelDetails:
    model: ModelVersion
    run: TrainingRun | None


@contextmanager
def _registry() -> Iterator[Registry]:
    registry = Registry()
    try:
        yield registry
    finally:
        registry.dispose()


def list_models(site: str | None = None) -> list[ModelVersion]:
    """Registered model versions (of ``site``), newest first."""
    with _registry() as registry:
        return registry.list_models(site=site)


def get_model(version: str) -> ModelDetails:
    """One model version and the training run that made it (``NotFoundError`` if unknown)."""
    with _registry() as registry:
        model = registry.get_model(version)
        run = None if model.training_run_id is None else registry.get_run(model.training_run_id)
    return ModelDetails(model=model, run=run)


def deploy(
    bundle_dir: Path,
    *,
    site: str,
    role: ModelRole,
    bootstrap: str,
    reason: str = "manual deploy",
    training_data: Sequence[Path] = (),
) -> ModelDeployed:
    """Register the bundle (verified by sha256), record the deployment, publish ``model.deployed``.

    ``training_data``: the dataset dirs it was trained on (verified against its lineage, kept in
    the blob store so that its retrains replay them)."""
    from defectloop.trainer.deploy import deploy_bundle
    from defectloop.trainer.pipeline import current_author

    with _registry() as registry:
        return deploy_bundle(
            bundle_dir,
            site=site,
            role=role,
            registry=registry,
            bootstrap=bootstrap,
            requested_by=current_author(),
            reason=reason,
            training_data=training_data,
        )


def active_champion(site: str) -> str | None:
    """The model version serving ``site`` as its active champion, if any."""
    with _registry() as registry:
        active = [
            d.model_version
            for d in registry.deployments(site)
            if d.role == ModelRole.CHAMPION.value and d.status == "active"
        ]
    return active[-1] if active else None


def config_files() -> list[tuple[str, bytes]]:
    """The trainer's config files as ``(relative path, bytes)``, sorted: what decides a recipe."""
    import defectloop.trainer.config as trainer_config

    configs = Path(trainer_config.__file__).parent / "configs"
    return [
        (path.relative_to(configs).as_posix(), path.read_bytes())
        for path in sorted(configs.rglob("*.yaml"))
    ]
