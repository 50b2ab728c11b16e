"""`defectloop simulate dataset` on a Typer app built from ``register``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from defectloop.cli import simulate
from defectloop.common.errors import InvalidInputError


def _app() -> typer.Typer:
    app = typer.Typer()
    simulate.register(app)

    @app.callback()
    def _root() -> None:
        """Keep `simulate` a sub-command even with a single group."""

    return app


def _invoke(*args: str) -> object:
    return CliRunner().invoke(_app(), ["simulate", "dataset", *args])


@pytest.mark.unit
def test_writes_a_dataset(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    result = _invoke(
        "--site",
        "C",
        "--n",
        "3",
        "--seed",
        "2",
        "--out",
        str(out),
        "--image-size",
        "96",
        "--drift",
        "blur:1:0.4",
        "--drift",
        "noise",
    )
    assert result.exit_code == 0, result.output
    params = json.loads((out / "dataset.json").read_text())
    assert params["image_size"] == [96, 96]
    assert [d["kind"] for d in params["drifts"]] == ["blur", "noise"]
    assert len(json.loads((out / "annotations.json").read_text())["images"]) == 3


@pytest.mark.unit
def test_unknown_site_lists_the_known_ones(tmp_path: Path) -> None:
    result = _invoke("--site", "Q", "--n", "2", "--out", str(tmp_path / "x"))
    assert isinstance(result.exception, InvalidInputError)
    assert "unknown site 'Q'" in str(result.exception)
    assert result.exception.hint == (
        "built-in sites: A, B, C; procedural: S01, S02, ... (S + number)"
    )


@pytest.mark.unit
def test_writes_a_procedural_site_and_its_profile_seed_matters(tmp_path: Path) -> None:
    for seed in ("0", "0", "5"):
        out = tmp_path / f"s07-{seed}-{len(list(tmp_path.iterdir()))}"
        result = _invoke("--site", "S07", "--profile-seed", seed, "--n", "2", "--out", str(out))
        assert result.exit_code == 0, result.output
    first, again, other = (sorted(d.glob("images/*.png")) for d in sorted(tmp_path.iterdir()))
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in again]
    assert [p.read_bytes() for p in first] != [p.read_bytes() for p in other]


@pytest.mark.unit
def test_bad_drift_kind_lists_the_kinds(tmp_path: Path) -> None:
    result = _invoke("--n", "2", "--out", str(tmp_path / "x"), "--drift", "fog:10")
    assert isinstance(result.exception, InvalidInputError)
    assert "unknown drift kind 'fog'" in str(result.exception)
    assert "camera-shift" in (result.exception.hint or "")


@pytest.mark.unit
def test_bad_image_size_is_rejected(tmp_path: Path) -> None:
    result = _invoke("--n", "2", "--out", str(tmp_path / "x"), "--image-size", "8")
    assert isinstance(result.exception, InvalidInputError)
