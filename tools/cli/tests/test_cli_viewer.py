"""`defectloop viewer-token` / `viewer-revoke`: monitor viewer tokens, printed once."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from defectloop.cli import viewer_cmd
from defectloop.common.db import make_engine
from defectloop.monitor import viewers

pytestmark = pytest.mark.unit


def _cli() -> typer.Typer:
    app = typer.Typer()
    viewer_cmd.register(app)
    return app


def test_viewer_token_prints_a_token_scoped_to_its_sites(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    runner = CliRunner()
    result = runner.invoke(
        _cli(), ["viewer-token", "--site", "A", "--site", "B", "--database-url", url]
    )
    assert result.exit_code == 0, result.output
    viewer = viewers.authenticate(make_engine(url), result.stdout.strip())
    assert viewer.sites == frozenset({"A", "B"})

    every = runner.invoke(_cli(), ["viewer-token", "--all-sites", "--database-url", url])
    assert every.exit_code == 0, every.output
    assert viewers.authenticate(make_engine(url), every.stdout.strip()).sites is None


def test_viewer_revoke_makes_the_token_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    runner = CliRunner()
    token = runner.invoke(_cli(), ["viewer-token", "--site", "A", "--database-url", url]).stdout
    token_id = token.strip().split("_")[1]
    result = runner.invoke(_cli(), ["viewer-revoke", token_id, "--database-url", url])
    assert result.exit_code == 0, result.output
    with pytest.raises(viewers.ViewerTokenError):
        viewers.authenticate(make_engine(url), token.strip())


@pytest.mark.parametrize(
    "args", [[], ["--site", "A", "--all-sites"], ["--site", "../etc"]], ids=str
)
def test_viewer_token_refuses_a_missing_or_bad_scope(tmp_path: Path, args: list[str]) -> None:
    url = f"sqlite:///{tmp_path / 'monitor.db'}"
    result = CliRunner().invoke(_cli(), ["viewer-token", *args, "--database-url", url])
    assert result.exit_code != 0
    assert result.stdout == ""
