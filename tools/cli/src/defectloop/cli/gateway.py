"""`defectloop gateway-token` / `gateway-revoke`: per-site tokens for camera gateways.

Tokens live (hashed) in the ingest service's database: by default the local stack's SQLite file
``<state>/ingest.db``. The token itself is printed once, on stdout alone, so that
``TOKEN=$(defectloop gateway-token --site A)`` works; nothing else can show it again.
"""

from __future__ import annotations

import re

import typer
from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)


def _database_url(database_url: str | None) -> str:
    from defectloop.ingest.settings import IngestSettings

    if database_url:
        return database_url
    return str(IngestSettings().resolved_database_url())


def _check_id(value: str | None, pattern: str, what: str) -> None:
    if value is not None and (len(value) > 64 or not re.fullmatch(pattern, value)):
        raise typer.BadParameter(f"invalid {what} id {value!r} (letters, digits, - and _)")


def register(app: typer.Typer) -> None:
    """Add the gateway token commands to the CLI."""

    @app.command("gateway-token")
    def gateway_token(
        site: str = typer.Option(..., "--site", help="Site the token may post to."),
        camera: str | None = typer.Option(
            None, "--camera", help="Restrict the token to one camera of the site."
        ),
        database_url: str | None = typer.Option(
            None,
            "--database-url",
            help="Ingest database (default: DEFECTLOOP_INGEST_DATABASE_URL or <state>/ingest.db).",
        ),
    ) -> None:
        """Create a gateway token for a site (optionally one camera) and print it once."""
        from defectloop.ingest.api import CAMERA_PATTERN, SITE_PATTERN
        from defectloop.ingest.auth import issue_token
        from defectloop.ingest.records import open_database

        _check_id(site, SITE_PATTERN, "site")
        _check_id(camera, CAMERA_PATTERN, "camera")
        engine = open_database(_database_url(database_url))
        try:
            issued = issue_token(engine, site, camera)
        finally:
            engine.dispose()
        scope = f"site {site}" + (f", camera {camera}" if camera else ", any camera")
        err_console.print(
            f"gateway token [bold]{issued.token_id}[/bold] for {scope} "
            "(shown once; store it in the gateway's secret store):"
        )
        typer.echo(issued.token)

    @app.command("gateway-revoke")
    def gateway_revoke(
        token_id: str = typer.Argument(..., help="The token id (the part after dlg_)."),
        database_url: str | None = typer.Option(
            None, "--database-url", help="Ingest database (default: <state>/ingest.db)."
        ),
    ) -> None:
        """Revoke a gateway token: its next upload gets 401."""
        from defectloop.common.errors import NotFoundError
        from defectloop.ingest.auth import revoke_token
        from defectloop.ingest.records import open_database

        engine = open_database(_database_url(database_url))
        try:
            revoked = revoke_token(engine, token_id)
        finally:
            engine.dispose()
        if not revoked:
            raise NotFoundError(
                f"no active gateway token {token_id}", hint="the id is the part after dlg_"
            )
        err_console.print(f"gateway token {token_id} revoked")
