"""`defectloop viewer-token` / `viewer-revoke`: site-scoped tokens for the monitor's dashboard.

Tokens are the monitor's: the commands go through its door, :mod:`defectloop.monitor.viewers`
(by default on the local stack's monitor database). The token is printed once, on stdout alone,
so that ``TOKEN=$(defectloop viewer-token --site A)`` works; nothing can show it again. Open the
dashboard with it in the URL fragment: ``http://127.0.0.1:8084/dashboard#token=$TOKEN``.
"""

from __future__ import annotations

import typer
from rich.console import Console

from defectloop.common.errors import InvalidInputError

err_console = Console(stderr=True, soft_wrap=True)

_DATABASE_HELP = (
    "Monitor database (default: DEFECTLOOP_MONITOR_DATABASE_URL or <state>/monitor.db)."
)


def register(app: typer.Typer) -> None:
    """Add the viewer token commands to the CLI."""

    @app.command("viewer-token")
    def viewer_token(
        sites: list[str] = typer.Option(
            [], "--site", help="A site the token may see (repeat for several)."
        ),
        all_sites: bool = typer.Option(False, "--all-sites", help="Every site, now and later."),
        database_url: str | None = typer.Option(None, "--database-url", help=_DATABASE_HELP),
    ) -> None:
        """Create a viewer token for some sites (or every site) and print it once."""
        from defectloop.monitor import viewers

        if bool(sites) == all_sites:
            raise InvalidInputError(
                "give the sites the token may see, or --all-sites (not both)",
                reason="invalid_scope",
                hint="defectloop viewer-token --site A [--site B]",
            )
        issued = viewers.issue(None if all_sites else sites, database_url=database_url)
        scope = "every site" if issued.sites is None else "site " + ", ".join(issued.sites)
        err_console.print(
            f"viewer token [bold]{issued.token_id}[/bold] for {scope} (shown once); open "
            "http://127.0.0.1:8084/dashboard#token=<token>:"
        )
        typer.echo(issued.token)

    @app.command("viewer-revoke")
    def viewer_revoke(
        token_id: str = typer.Argument(..., help="The token id (the part after dlv_)."),
        database_url: str | None = typer.Option(None, "--database-url", help=_DATABASE_HELP),
    ) -> None:
        """Revoke a viewer token: its next request gets 401."""
        from defectloop.monitor import viewers

        viewers.revoke(token_id, database_url=database_url)
        err_console.print(f"viewer token {token_id} revoked")
