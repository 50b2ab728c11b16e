"""Turn every failure into one clear line plus a hint, never a traceback."""

from __future__ import annotations

import os

import typer
from rich.console import Console
from rich.markup import escape
from typer._click.exceptions import ClickException  # Typer vendors click since 0.16

from defectloop.common.errors import ConfigError, DefectloopError

err_console = Console(stderr=True, soft_wrap=True)  # one line, however long


def require_trainer() -> None:
    """Fail with one line and a hint when the optional trainer (and torch) is not installed."""
    import importlib.util

    try:
        found = importlib.util.find_spec("defectloop.trainer.api") is not None
    except ImportError:  # the defectloop.trainer package itself is absent
        found = False
    if not found:
        raise ConfigError(
            "this command needs the trainer, which is not installed",
            reason="trainer_missing",
            hint="install it with: pip install 'defectloop-cli[train]'",
        )


def run_cli(app: typer.Typer) -> int:
    try:
        result = app(standalone_mode=False)
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        err_console.print("[red]error:[/red] aborted")
        return 130
    except ClickException as exc:
        err_console.print(f"[red]error:[/red] {escape(exc.format_message())}")
        err_console.print("[dim]hint: run the command with --help to see its options[/dim]")
        return exc.exit_code
    except DefectloopError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}")
        if exc.hint:
            err_console.print(f"[dim]hint: {escape(exc.hint)}[/dim]")
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: still one line, the traceback only on request
        if os.environ.get("DEFECTLOOP_DEBUG"):
            raise
        err_console.print(f"[red]error:[/red] {type(exc).__name__}: {escape(str(exc))}")
        err_console.print("[dim]hint: set DEFECTLOOP_DEBUG=1 to see the traceback[/dim]")
        return 1
    return int(result) if isinstance(result, int) else 0
