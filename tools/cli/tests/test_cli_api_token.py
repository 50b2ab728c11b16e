"""`defectloop api-token` / `api-token-revoke` / `api-tokens`: one token, written into each
service's own table, revoked everywhere; bad claims are one-line errors with nothing on stdout."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from defectloop.cli import viewer_cmd
from defectloop.common import authz
from defectloop.common.db import make_engine

pytestmark = pytest.mark.unit


def _cli() -> typer.Typer:
    app = typer.Typer()
    viewer_cmd.register(app)
    return app


def _urls(tmp_path: Path) -> dict[str, str]:
    return {s: f"sqlite:///{tmp_path / s}.db" for s in viewer_cmd.API_SERVICES}


def _url_args(urls: dict[str, str]) -> list[str]:
    return [arg for s, u in urls.items() for arg in ("--database-url", f"{s}={u}")]


def test_one_token_works_on_every_service_until_revoked(tmp_path: Path) -> None:
    urls = _urls(tmp_path)
    runner = CliRunner()
    args = ["api-token", "--role", "approver", "--site", "A", "--user", "ana", "--expires", "30d"]
    result = runner.invoke(_cli(), [*args, *_url_args(urls)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.startswith("dla_")
    for url in urls.values():
        principal = authz.authenticate(make_engine(url), token)
        assert (principal.user, principal.role, principal.sites) == (
            "ana",
            authz.Role.APPROVER,
            frozenset({"A"}),
        )

    listed = runner.invoke(_cli(), ["api-tokens", *_url_args(urls)])
    assert listed.exit_code == 0, listed.output
    assert len(listed.stdout.splitlines()) == len(urls)
    assert token not in listed.stdout

    token_id = token.split("_")[1]
    revoked = runner.invoke(_cli(), ["api-token-revoke", token_id, *_url_args(urls)])
    assert revoked.exit_code == 0, revoked.output
    for url in urls.values():
        with pytest.raises(authz.TokenError):
            authz.authenticate(make_engine(url), token)
    again = runner.invoke(_cli(), ["api-token-revoke", token_id, *_url_args(urls)])
    assert again.exit_code != 0


def test_a_token_for_one_service_is_written_there_only(tmp_path: Path) -> None:
    urls = _urls(tmp_path)
    result = CliRunner().invoke(
        _cli(),
        [
            "api-token",
            "--role",
            "ops",
            "--all-sites",
            "--user",
            "oscar",
            "--service",
            "trainer",
            "--database-url",
            f"trainer={urls['trainer']}",
        ],
    )
    assert result.exit_code == 0, result.output
    assert authz.authenticate(make_engine(urls["trainer"]), result.stdout.strip()).sites is None
    assert not Path(urls["monitor"].removeprefix("sqlite:///")).exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--role", "viewer", "--user", "u"],
        ["--role", "viewer", "--user", "u", "--site", "A", "--all-sites"],
        ["--role", "root", "--user", "u", "--site", "A"],
        ["--role", "viewer", "--user", " ", "--site", "A"],
        ["--role", "viewer", "--user", "u", "--site", "../etc"],
        ["--role", "viewer", "--user", "u", "--site", "A", "--expires", "soon"],
        ["--role", "viewer", "--user", "u", "--site", "A", "--service", "ingest"],
    ],
    ids=str,
)
def test_api_token_refuses_bad_claims(tmp_path: Path, args: list[str]) -> None:
    result = CliRunner().invoke(_cli(), ["api-token", *args, *_url_args(_urls(tmp_path))])
    assert result.exit_code != 0
    assert result.stdout == ""
