"""MLflow experiment tracking, best effort: a tracking failure never loses a trained bundle.

Local file store under ``$DEFECTLOOP_HOME/mlruns`` by default; ``MLFLOW_TRACKING_URI`` (e.g. an
MLflow server in production) wins when set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import structlog

from defectloop.common.paths import state_home

log = structlog.get_logger(__name__)

EXPERIMENT = "defectloop-trainer"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    # MLflow 3 keeps the file store in maintenance mode and refuses it unless opted in; a local
    # directory is what a laptop and CI want (no server, nothing to migrate), so opt in for it.
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return (state_home() / "mlruns").resolve().as_uri()


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def log_training(
    *,
    config: dict[str, Any],
    params: dict[str, Any],
    epoch_metrics: list[dict[str, float]],
    metrics: dict[str, float],
    tags: dict[str, str],
    bundle_dir: Path,
    run_name: str,
) -> str | None:
    """Log one finished training run; return the MLflow run id, or None if tracking failed."""
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking_uri())
        mlflow.set_experiment(EXPERIMENT)
        flat: dict[str, Any] = {}
        _flatten("", config, flat)
        flat.update(params)
        with mlflow.start_run(run_name=run_name) as run:
            # MLflow caps a param value at a few hundred characters: labels lists stay short.
            mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})
            mlflow.set_tags(tags)
            for step, row in enumerate(epoch_metrics, start=1):
                mlflow.log_metrics(row, step=step)
            mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in metrics.items()})
            mlflow.log_artifacts(str(bundle_dir), artifact_path="bundle")
            run_id: str = run.info.run_id
        return run_id
    except Exception as exc:  # any tracking failure is a warning, never a lost model
        log.warning("mlflow_logging_failed", error=f"{type(exc).__name__}: {exc}")
        return None
