"""`defectloop labelstudio start|stop|info`: a real local Label Studio, headless."""

from __future__ import annotations

import json
import time

import typer
from rich.console import Console

from defectloop.cli import labelstudio_local

console = Console(stderr=True)

_SITE_HELP = (
    "Run the instance of this site (strict segregation: one Label Studio per site) "
    "instead of the stack's shared one."
)


def register(app: typer.Typer) -> None:
    """Add the ``labelstudio`` command group to the CLI."""
    ls = typer.Typer(
        help="Run a real local Label Studio (open-source, headless, own virtualenv).",
        no_args_is_help=True,
    )

    @ls.command("start")
    def start(
        port: int | None = typer.Option(
            None, help="Port (default 8080 or DEFECTLOOP_LABELSTUDIO_PORT)."
        ),
        site: str | None = typer.Option(None, help=_SITE_HELP),
        timeout: float = typer.Option(300.0, help="Seconds to wait for /health."),
    ) -> None:
        """Start Label Studio (idempotent); returns when /health answers and the token works."""
        layout = labelstudio_local.default_layout(site, port)
        began = time.monotonic()
        with console.status("starting Label Studio (the first start runs its migrations)..."):
            started = labelstudio_local.start(layout, timeout_s=timeout)
        verb = f"started in {time.monotonic() - began:.1f} s" if started else "already running"
        console.print(f"label studio {verb}: [bold]{layout.url}[/bold]")

    @ls.command("stop")
    def stop(
        port: int | None = typer.Option(None, help="Port of the instance."),
        site: str | None = typer.Option(None, help=_SITE_HELP),
    ) -> None:
        """Stop Label Studio by its process id."""
        layout = labelstudio_local.default_layout(site, port)
        if labelstudio_local.stop(layout):
            console.print("label studio stopped")
        else:
            console.print("label studio was not running")

    @ls.command("info")
    def info(
        port: int | None = typer.Option(None, help="Port of the instance."),
        site: str | None = typer.Option(None, help=_SITE_HELP),
    ) -> None:
        """Print JSON: {"url", "token", "running", "projects": {site: project id}}."""
        layout = labelstudio_local.default_layout(site, port)
        typer.echo(json.dumps(labelstudio_local.info(layout), indent=2))

    app.add_typer(ls, name="labelstudio")


def up(site: str | None = None) -> bool:
    """Start Label Studio for ``defectloop up`` (idempotent); True if this call started it."""
    return labelstudio_local.start(labelstudio_local.default_layout(site))


def down(site: str | None = None) -> bool:
    """Stop it for ``defectloop down``; True if it was running."""
    return labelstudio_local.stop(labelstudio_local.default_layout(site))
