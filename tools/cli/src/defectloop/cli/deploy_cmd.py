"""`defectloop models deploy BUNDLE --site S [--role champion|shadow]`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from defectloop.cli.errors import require_trainer

console = Console()


def models_deploy(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory (model.onnx + model.json).")],
    site: Annotated[str, typer.Option(help="Site the model serves.")],
    role: Annotated[
        str, typer.Option(help="champion (decides), challenger or shadow (observe only).")
    ] = "champion",
    bootstrap: Annotated[
        str | None, typer.Option(help="Kafka bootstrap (default: the local broker).")
    ] = None,
    training_data: Annotated[
        list[Path] | None,
        typer.Option(
            help="COCO dataset dir the model was trained on (repeatable): verified against its "
            "lineage and kept in the blob store, so that its retrains replay it."
        ),
    ] = None,
) -> None:
    """Register the bundle (verified by sha256) and publish model.deployed for the site."""
    from defectloop.cli import kafka_local
    from defectloop.common.errors import InvalidInputError
    from defectloop.common.events import ModelRole

    try:
        model_role = ModelRole(role)
    except ValueError as exc:
        raise InvalidInputError(
            f"unknown role {role!r}", hint="one of champion, challenger, shadow"
        ) from exc
    require_trainer()
    from defectloop.trainer import api

    event = api.deploy(
        bundle,
        site=site,
        role=model_role,
        bootstrap=bootstrap or kafka_local.default_layout().bootstrap,
        training_data=training_data or (),
    )
    console.print(
        f"deployed {event.model_name} {event.model_version} as {event.role.value} of site {site} "
        f"(sha256 {event.sha256[:12]}…)"
    )
