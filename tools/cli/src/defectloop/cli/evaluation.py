"""`defectloop eval`: evaluate a model bundle on a COCO dataset directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("eval", help="Evaluate a model bundle on a COCO dataset (mAP@0.5, P/R/F1).")(
        eval_command
    )


def eval_command(
    bundle: Annotated[
        Path, typer.Argument(help="Bundle directory (model.onnx + model.json).", show_default=False)
    ],
    dataset: Annotated[
        Path,
        typer.Option(
            "--dataset", help="COCO dataset dir: annotations.json + images/.", show_default=False
        ),
    ],
    report: Annotated[
        Path, typer.Option("--report", help="Where to write the metrics JSON.", show_default=False)
    ],
    predictions_out: Annotated[
        Path | None,
        typer.Option("--predictions-out", help="Also write the detections as COCO results JSON."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per run.")] = 8,
    providers: Annotated[
        str, typer.Option("--providers", help="auto, cpu, cuda or tensorrt.")
    ] = "auto",
) -> None:
    from defectloop.vision.coco import write_results
    from defectloop.vision.evaluate import evaluate_bundle
    from defectloop.vision.runtime import ProviderChoice, select_providers

    choice = cast(ProviderChoice, providers)
    select_providers(choice)  # fail fast with a clear error on a bad choice
    with Progress(
        TextColumn("[bold]evaluating[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("eval", total=None)

        def on_progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        result = evaluate_bundle(
            bundle, dataset, batch_size=batch_size, progress=on_progress, providers=choice
        )

    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    if predictions_out is not None:
        write_results(predictions_out, result.predictions)

    table = Table(title=f"{result.model_name} {result.model_version} on {result.n_images} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("mAP@0.5", f"{result.map50:.3f}")
    for name, ap in result.per_class_ap.items():
        table.add_row(f"  AP@0.5 {name}", "n/a" if ap is None else f"{ap:.3f}")
    table.add_row(f"precision @ {result.decision_threshold:g}", f"{result.precision:.3f}")
    table.add_row(f"recall @ {result.decision_threshold:g}", f"{result.recall:.3f}")
    table.add_row("F1", f"{result.f1:.3f}")
    console.print(table)
    console.print(f"report: {report}")
    if predictions_out is not None:
        console.print(f"predictions: {predictions_out} ({len(result.predictions)} boxes)")
