"""`defectloop gateway-token` / `gateway-revoke`: tokens issued through ingest's door, printed once."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from defectloop.cli import gateway
from defectloop.ingest import auth
from defectloop.ingest.records import open_database

pytestmark = pytest.mark.unit


def _cli() -> typer.Typer:
    app = typer.Typer()
    gateway.register(app)
    return app


def test_gateway_token_prints_a_token_that_authenticates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    result = CliRunner().invoke(
        _cli(), ["gateway-token", "--site", "A", "--camera", "cam-1", "--database-url", url]
    )
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    identity = auth.authenticate(open_database(url), token)
    assert (identity.site_id, identity.camera_id) == ("A", "cam-1")


def test_gateway_revoke_makes_the_token_fail(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    runner = CliRunner()
    token = runner.invoke(_cli(), ["gateway-token", "--site", "A", "--database-url", url]).stdout
    token_id = auth.token_id_of(token.strip())
    assert token_id is not None
    result = runner.invoke(_cli(), ["gateway-revoke", token_id, "--database-url", url])
    assert result.exit_code == 0, result.output
    with pytest.raises(auth.AuthError):
        auth.authenticate(open_database(url), token.strip())


def test_gateway_token_refuses_an_invalid_site(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ingest.db'}"
    result = CliRunner().invoke(
        _cli(), ["gateway-token", "--site", "../etc", "--database-url", url]
    )
    assert result.exit_code != 0
