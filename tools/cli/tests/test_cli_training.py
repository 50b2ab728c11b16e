"""The `train` / `models` commands through the real CLI runner (one line + hint on errors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from defectloop.cli import app as cli_app
from defectloop.testing.datasets import make_coco_dir
from defectloop.testing.state import isolate_state

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return isolate_state(monkeypatch, tmp_path)


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    return make_coco_dir(tmp_path / "ds")


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    from defectloop.cli.errors import run_cli

    monkeypatch.setattr("sys.argv", ["defectloop", *argv])
    return run_cli(cli_app.build_cli())


def test_unknown_version_is_one_error_line_with_a_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["models", "show", "nope"], monkeypatch) == 1
    err = capsys.readouterr().err
    assert "model version nope not found" in err
    assert "defectloop models list" in err
    assert "Traceback" not in err


def test_bad_preset_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], coco_dir: Path,
    tmp_path: Path,
) -> None:
    code = _run(
        ["train", "--dataset", str(coco_dir), "--out", str(tmp_path / "b"), "--preset", "turbo"],
        monkeypatch,
    )
    assert code == 1
    assert "unknown preset 'turbo'" in capsys.readouterr().err


def test_models_list_json_on_an_empty_registry(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(["models", "list", "--json"], monkeypatch) == 0
    assert json.loads(capsys.readouterr().out) == []
