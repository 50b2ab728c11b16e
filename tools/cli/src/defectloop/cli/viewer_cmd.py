"""`defectloop api-token` / `api-token-revoke` / `api-tokens`: API tokens with a role per site for
the monitor, annotation-sync and trainer APIs (and the dashboard); `viewer-token` / `viewer-revoke`:
the monitor's own site-scoped viewer tokens (kept: a viewer token is role viewer on the monitor).

An API token (:mod:`defectloop.common.authz`) is minted once and its row (id, SHA-256, user, role,
sites, expiry) written into the ``api_token`` table of each service named (default: all three), so
one token works on every API and ``api-token-revoke`` revokes it everywhere. Each service's
database is its ``DEFECTLOOP_<SERVICE>_DATABASE_URL`` or ``<state>/<service>.db``, as the service
itself resolves it; ``--database-url service=URL`` overrides one.

Tokens are the monitor's: the commands go through its door, :mod:`defectloop.monitor.viewers`
(by default on the local stack's monitor database). The token is printed once, on stdout alone,
so that ``TOKEN=$(defectloop viewer-token --site A)`` works; nothing can show it again. Open the
dashboard with it in the URL fragment: ``http://127.0.0.1:8084/dashboard#token=$TOKEN``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from defectloop.common.errors import InvalidInputError

API_SERVICES = ("monitor", "annotation-sync", "trainer")
"""The services with human-facing APIs (their settings' ``service_name``)."""

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

err_console = Console(stderr=True, soft_wrap=True)

_DATABASE_HELP = (
    "Monitor database (default: DEFECTLOOP_MONITOR_DATABASE_URL or <state>/monitor.db)."
)


def register(app: typer.Typer) -> None:
    """Add the viewer and API token commands to the CLI."""
    register_api_tokens(app)

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


def service_database_url(service: str, overrides: dict[str, str]) -> str:
    """Where ``service`` keeps its tables: as its settings resolve it (the prefixed env variable,
    the trainer's older ``DB_URL`` too, else ``<state>/<service>.db``)."""
    import os

    from defectloop.common.paths import state_home

    if service in overrides:
        return overrides[service]
    prefix = "DEFECTLOOP_" + service.upper().replace("-", "_")
    for name in (f"{prefix}_DATABASE_URL", f"{prefix}_DB_URL"):
        if os.environ.get(name):
            return os.environ[name]
    return f"sqlite:///{state_home() / (service + '.db')}"


def _targets(services: list[str], database_urls: list[str]) -> dict[str, str]:
    chosen = services or list(API_SERVICES)
    unknown = [s for s in chosen if s not in API_SERVICES]
    if unknown:
        raise InvalidInputError(
            f"unknown service {unknown[0]!r}",
            reason="invalid_service",
            hint="one of: " + ", ".join(API_SERVICES),
        )
    overrides: dict[str, str] = {}
    for item in database_urls:
        service, sep, url = item.partition("=")
        if not sep or service not in chosen or not url:
            raise InvalidInputError(
                f"invalid --database-url {item!r}",
                reason="invalid_database_url",
                hint="use SERVICE=URL for a service the token is for, e.g. monitor=sqlite:///m.db",
            )
        overrides[service] = url
    return {s: service_database_url(s, overrides) for s in chosen}


def _each_engine(targets: dict[str, str]) -> Iterator[tuple[str, Engine]]:
    from defectloop.common.db import make_engine

    for service, url in targets.items():
        engine = make_engine(url, create_tables=False)
        try:
            yield service, engine
        finally:
            engine.dispose()


_SERVICE_HELP = "A service the token is for (repeat; default: monitor, annotation-sync, trainer)."
_URL_HELP = "SERVICE=URL: that service's database (default: as the service resolves it)."


def register_api_tokens(app: typer.Typer) -> None:
    """Add the API token commands to the CLI."""

    @app.command("api-token")
    def api_token(
        role: str = typer.Option(..., "--role", help="viewer, annotation_admin, approver or ops."),
        user: str = typer.Option(..., "--user", help="Who it is for: the actor of what it does."),
        sites: list[str] = typer.Option([], "--site", help="A site it covers (repeat)."),
        all_sites: bool = typer.Option(False, "--all-sites", help="Every site, now and later."),
        expires: str | None = typer.Option(None, "--expires", help="Lifetime: 30d, 12h, 45m."),
        services: list[str] = typer.Option([], "--service", help=_SERVICE_HELP),
        database_urls: list[str] = typer.Option([], "--database-url", help=_URL_HELP),
    ) -> None:
        """Create an API token with a role on some sites and print it once (stdout alone)."""
        from defectloop.common import authz

        if bool(sites) == all_sites:
            raise InvalidInputError(
                "give the sites the token covers, or --all-sites (not both)",
                reason="invalid_scope",
                hint="defectloop api-token --role viewer --site A [--site B] --user NAME",
            )
        lifetime = authz.parse_duration(expires) if expires is not None else None
        issued, row = authz.new_token(role, None if all_sites else sites, user, lifetime)
        targets = _targets(services, database_urls)
        for _, engine in _each_engine(targets):
            authz.store(engine, row)
        scope = "every site" if issued.sites is None else "site " + ", ".join(issued.sites)
        until = f", until {issued.expires_at:%Y-%m-%d %H:%M} UTC" if issued.expires_at else ""
        err_console.print(
            f"API token [bold]{issued.token_id}[/bold]: {issued.user} as {issued.role} on {scope}"
            f"{until}, for {', '.join(targets)} (shown once):"
        )
        typer.echo(issued.token)

    @app.command("api-token-revoke")
    def api_token_revoke(
        token_id: str = typer.Argument(..., help="The token id (the part after dla_)."),
        services: list[str] = typer.Option([], "--service", help=_SERVICE_HELP),
        database_urls: list[str] = typer.Option([], "--database-url", help=_URL_HELP),
    ) -> None:
        """Revoke an API token on every service that has it: its next request gets 401."""
        from defectloop.common import authz

        revoked = [
            s
            for s, engine in _each_engine(_targets(services, database_urls))
            if authz.revoke(engine, token_id)
        ]
        authz.require_revoked(token_id, bool(revoked))
        err_console.print(f"API token {token_id} revoked on {', '.join(revoked)}")

    @app.command("api-tokens")
    def api_tokens(
        services: list[str] = typer.Option([], "--service", help=_SERVICE_HELP),
        database_urls: list[str] = typer.Option([], "--database-url", help=_URL_HELP),
    ) -> None:
        """List the API tokens of each service (ids and claims; never the secrets)."""
        from defectloop.common import authz

        for service, engine in _each_engine(_targets(services, database_urls)):
            for t in authz.list_tokens(engine):
                scope = "*" if t.sites is None else ",".join(t.sites)
                state = (
                    "revoked"
                    if t.revoked_at
                    else (f"expires {t.expires_at:%Y-%m-%d}" if t.expires_at else "active")
                )
                typer.echo(f"{service}\t{t.token_id}\t{t.user}\t{t.role}\t{scope}\t{state}")
