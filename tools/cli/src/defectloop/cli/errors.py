"""Turn every failure into one clear line plus a hint, never a traceback."""

from __future__ import annotations

import os

import click
import typer
from rich.console import Console

from defectloop.common.errors import DefectloopError

err_console = Console(stderr=True)


def run_cli(app: typer.Typer) -> int:
    try:
        result = app(standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        err_console.print("[red]error:[/red] aborted")
        return 130
    except click.ClickException as exc:
        err_console.print(f"[red]error:[/red] {exc.format_message()}")
        err_console.print("[dim]hint: run the command with --help to see its options[/dim]")
        return exc.exit_code
    except DefectloopError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        if exc.hint:
            err_console.print(f"[dim]hint: {exc.hint}[/dim]")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: still one line, the traceback only on request
        if os.environ.get("DEFECTLOOP_DEBUG"):
            raise
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        err_console.print("[dim]hint: set DEFECTLOOP_DEBUG=1 to see the traceback[/dim]")
        return 1
    return int(result) if isinstance(result, int) else 0
