"""`defectloop gateway-token` / `gateway-revoke`: per-site tokens for camera gateways.

Tokens are ingest's: the commands go through its public door, :mod:`defectloop.ingest.tokens`
(by default on the local stack's ingest database). The token itself is printed once, on stdout
alone, so that ``TOKEN=$(defectloop gateway-token --site A)`` works; nothing can show it again.
"""

from __future__ import annotations

import typer
from rich.console import Console

err_console = Console(stderr=True, soft_wrap=True)

_DATABASE_HELP = "Ingest database (default: DEFECTLOOP_INGEST_DATABASE_URL or <state>/ingest.db)."


def register(app: typer.Typer) -> None:
    """Add the gateway token commands to the CLI."""

    @app.command("gateway-token")
    def gateway_token(
        site: str = typer.Option(..., "--site", help="Site the token may post to."),
        camera: str | None = typer.Option(
            None, "--camera", help="Restrict the token to one camera of the site."
        ),
        database_url: str | None = typer.Option(None, "--database-url", help=_DATABASE_HELP),
    ) -> None:
        """Create a gateway token for a site (optionally one camera) and print it once."""
        from defectloop.ingest import tokens

        issued = tokens.issue(site, camera, database_url=database_url)
        scope = f"site {site}" + (f", camera {camera}" if camera else ", any camera")
        err_console.print(
            f"gateway token [bold]{issued.token_id}[/bold] for {scope} "
            "(shown once; store it in the gateway's secret store):"
        )
        typer.echo(issued.token)

    @app.command("gateway-revoke")
    def gateway_revoke(
        token_id: str = typer.Argument(..., help="The token id (the part after dlg_)."),
        database_url: str | None = typer.Option(None, "--database-url", help=_DATABASE_HELP),
    ) -> None:
        """Revoke a gateway token: its next upload gets 401."""
        from defectloop.ingest import tokens

        tokens.revoke(token_id, database_url=database_url)
        err_console.print(f"gateway token {token_id} revoked")
