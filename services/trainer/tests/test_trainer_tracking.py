from __future__ import annotations

from pathlib import Path

import pytest

from defectloop.trainer.tracking import log_training, tracking_uri

pytestmark = pytest.mark.unit


def _log(bundle: Path) -> str | None:
    return log_training(
        config={"train": {"epochs": 1}},
        params={"seed": 1},
        epoch_metrics=[{"loss": 1.0}, {"loss": 0.5}],
        metrics={"val_map50": 0.5},
        tags={"dataset_version": "d"},
        bundle_dir=bundle,
        run_name="v1",
    )


def test_default_store_is_under_defectloop_home(isolated_home: Path) -> None:
    assert tracking_uri() == (isolated_home.resolve() / "mlruns").as_uri()


def test_logs_a_run_with_the_bundle_as_artifact(tmp_path: Path, isolated_home: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.json").write_text("{}")
    run_id = _log(bundle)
    assert run_id is not None
    assert list((isolated_home / "mlruns").rglob("bundle/model.json"))


def test_a_broken_tracking_server_is_only_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unknownscheme://nowhere")
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    assert _log(bundle) is None
    assert bundle.is_dir()
