from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectloop.common.errors import NotFoundError
from defectloop.trainer.registry import (
    DatasetVersion,
    Deployment,
    ModelVersion,
    Registry,
    TrainingRun,
)

pytestmark = pytest.mark.unit


def _registry(tmp_path: Path) -> Registry:
    return Registry(f"sqlite:///{tmp_path / 'trainer.db'}")


def _fill(reg: Registry) -> ModelVersion:
    reg.upsert_dataset(
        DatasetVersion(
            version="d" * 64,
            site="A",
            num_images=3,
            num_train=2,
            num_val=1,
            manifest_json=json.dumps({"images": []}),
            sources_json='["/data/a"]',
        )
    )
    run = reg.add_run(
        TrainingRun(
            dataset_version="d" * 64,
            dataset_dirs_json='["/data/a"]',
            site="A",
            preset="quick",
            config_json='{"x": 1}',
            config_sha256="c" * 64,
            seed=7,
            git_commit="abc",
            lockfile_sha256="l" * 64,
        )
    )
    return reg.add_model(
        ModelVersion(
            version="v1",
            name="det",
            training_run_id=run.id,
            dataset_version="d" * 64,
            site="A",
            git_commit="abc",
            lockfile_sha256="l" * 64,
            config_sha256="c" * 64,
            seed=7,
            sha256="s" * 64,
            bundle_path="/b",
            metrics_json='{"val_map50": 0.9}',
            author="alice",
        )
    )


def test_round_trip_of_dataset_run_model_and_deployment(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    _fill(reg)
    reg.add_deployment(
        Deployment(site="A", role="shadow", model_version="v1", requested_by="alice")
    )

    again = _registry(tmp_path)  # a fresh engine on the same file
    model = again.get_model("v1")
    assert model.metrics == {"val_map50": 0.9}
    assert model.author == "alice"
    assert model.training_run_id is not None
    run = again.get_run(model.training_run_id)
    assert run.config == {"x": 1}
    assert run.seed == 7
    assert run.dataset_dirs == ["/data/a"]
    assert again.get_dataset("d" * 64).manifest == {"images": []}
    assert [m.version for m in again.list_models(site="A")] == ["v1"]
    assert again.list_models(site="B") == []
    [deployment] = again.deployments("A")
    assert (deployment.role, deployment.model_version, deployment.approver) == (
        "shadow",
        "v1",
        None,
    )


def test_upserting_a_known_dataset_updates_where_it_was_seen(tmp_path: Path) -> None:
    reg = _registry(tmp_path)
    _fill(reg)
    reg.upsert_dataset(
        DatasetVersion(
            version="d" * 64,
            num_images=3,
            num_train=2,
            num_val=1,
            manifest_json="{}",
            sources_json='["/moved"]',
        )
    )
    ds = reg.get_dataset("d" * 64)
    assert ds.sources == ["/moved"]
    assert ds.manifest == {"images": []}  # content is immutable


def test_unknown_version_is_a_not_found_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="model version nope not found") as info:
        _registry(tmp_path).get_model("nope")
    assert "models list" in (info.value.hint or "")


def test_default_location_is_under_defectloop_home(isolated_home: Path) -> None:
    reg = Registry()
    assert reg.url == f"sqlite:///{isolated_home.resolve() / 'trainer.db'}"


def test_env_url_overrides_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("DEFECTLOOP_TRAINER_DB_URL", url)
    assert Registry().url == url
