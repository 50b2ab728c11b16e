"""Placeholder: `defectloop gateway-token` lands with the ingest service."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
