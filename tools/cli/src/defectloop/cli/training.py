"""`defectloop train` and `defectloop models list|show|reproduce`.

The trainer is an optional extra (``defectloop-cli[train]``, it brings torch): its public door,
``defectloop.trainer.api``, is imported inside the commands, so the rest of the CLI starts
instantly and works without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from defectloop.cli.errors import require_trainer

if TYPE_CHECKING:
    from defectloop.trainer.api import EpochStats, ProgressSink

console = Console()


def _progress_sink(total_label: str = "training") -> ProgressSink:
    """A rich progress bar over epochs and steps, with the running loss."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from defectloop.trainer.api import ProgressSink

    class RichSink(ProgressSink):
        def __init__(self) -> None:
            self.progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console,
                transient=False,
            )
            self.task: Any = None
            self.steps_per_epoch = 1

        def phase(self, name: str) -> None:
            console.print(f"[dim]· {name}[/dim]")

        def start(self, total_epochs: int, steps_per_epoch: int) -> None:
            self.steps_per_epoch = steps_per_epoch
            self.progress.start()
            self.task = self.progress.add_task(
                total_label, total=total_epochs * steps_per_epoch, info=""
            )

        def step(self, epoch: int, step: int, loss: float) -> None:
            self.progress.update(
                self.task,
                completed=(epoch - 1) * self.steps_per_epoch + step,
                info=f"epoch {epoch} loss {loss:.3f}",
            )

        def epoch_end(self, stats: EpochStats) -> None:
            self.progress.console.print(
                f"epoch {stats.epoch:3d}  loss {stats.loss:.4f}  (heatmap {stats.heatmap_loss:.4f}"
                f"  size {stats.size_loss:.4f}  offset {stats.offset_loss:.4f})"
                f"  lr {stats.lr:.2e}  {stats.seconds:.1f}s"
            )

        def stop(self) -> None:
            if self.task is not None:
                self.progress.stop()

    return RichSink()


def _metrics_table(title: str, metrics: dict[str, float]) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in sorted(metrics.items()):
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def train_cmd(
    dataset: Annotated[
        list[Path], typer.Option("--dataset", help="COCO dataset dir (repeatable).")
    ],
    out: Annotated[Path, typer.Option("--out", help="Bundle directory to write.")],
    preset: Annotated[str, typer.Option(help="Config preset: quick | default.")] = "quick",
    seed: Annotated[int, typer.Option(help="Training seed.")] = 0,
    site: Annotated[
        str | None, typer.Option(help="Site: applies its config overrides, keeps its images.")
    ] = None,
    from_bundle: Annotated[
        Path | None, typer.Option("--from", help="Bundle to fine-tune from.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML overrides merged over the preset.")
    ] = None,
    no_track: Annotated[bool, typer.Option("--no-track", help="Skip MLflow logging.")] = False,
) -> None:
    """Train a detector reproducibly, export it to ONNX, register it."""
    require_trainer()
    from defectloop.trainer import api

    sink = _progress_sink()
    try:
        outcome = api.train(
            dataset,
            preset=preset,
            seed=seed,
            out_dir=out,
            site=site,
            parent_bundle=from_bundle,
            overrides=config,
            progress=sink,
            track=not no_track,
        )
    finally:
        sink.stop()  # type: ignore[attr-defined]
    m = outcome.result.manifest
    console.print(
        f"[green]model {m.version}[/green] → {out}  sha256 {m.sha256[:16]}…  "
        f"dataset {m.lineage.dataset_version[:12]}…  "
        f"trained in {outcome.result.train_seconds:.1f}s"
    )
    console.print(_metrics_table("hold-out metrics", m.metrics))
    if outcome.mlflow_run_id is None and not no_track:
        console.print(
            "[yellow]MLflow logging failed; the bundle and registry entry are intact[/yellow]"
        )


def models_list(
    site: Annotated[str | None, typer.Option(help="Only this site's models.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List registered model versions, newest first."""
    require_trainer()
    from defectloop.trainer import api

    models = api.list_models(site)
    if as_json:
        console.print_json(json.dumps([_model_dict(m) for m in models], default=str))
        return
    table = Table(title="model versions")
    for col in ("version", "site", "parent", "dataset", "seed", "val map50", "author", "created"):
        table.add_column(col, no_wrap=col in ("version", "parent"))
    for m in models:
        table.add_row(
            m.version,
            m.site or "-",
            m.parent_version or "-",
            m.dataset_version[:12],
            str(m.seed),
            f"{m.metrics.get('val_map50', float('nan')):.3f}",
            m.author,
            f"{m.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


def _model_dict(m: Any) -> dict[str, Any]:
    data: dict[str, Any] = m.model_dump(exclude={"metrics_json"})
    data["metrics"] = m.metrics
    return data


def models_show(
    version: Annotated[str, typer.Argument(help="Model version.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show one model version: lineage, metrics, bundle."""
    require_trainer()
    from defectloop.trainer import api

    details = api.get_model(version)
    model, run = details.model, details.run
    data = _model_dict(model)
    if run is not None:
        data["training_run"] = {
            "id": run.id,
            "preset": run.preset,
            "dataset_dirs": run.dataset_dirs,
            "mlflow_run_id": run.mlflow_run_id,
            "train_seconds": run.train_seconds,
            "config": run.config,
        }
    if as_json:
        console.print_json(json.dumps(data, default=str))
        return
    table = Table(title=f"model {version}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key in (
        "name",
        "site",
        "parent_version",
        "dataset_version",
        "git_commit",
        "lockfile_sha256",
        "config_sha256",
        "seed",
        "sha256",
        "bundle_path",
        "author",
        "created_at",
    ):
        table.add_row(key, str(data.get(key)))
    if "training_run" in data:
        run_info = data["training_run"]
        table.add_row("preset", str(run_info["preset"]))
        table.add_row("dataset dirs", "\n".join(run_info["dataset_dirs"]))
        table.add_row("mlflow run", str(run_info["mlflow_run_id"]))
    console.print(table)
    console.print(_metrics_table("metrics", model.metrics))


def models_reproduce(
    version: Annotated[str, typer.Argument(help="Model version to retrain.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the reproduced bundle.")],
) -> None:
    """Retrain a version from its recorded dataset, config and seed; compare the bytes."""
    require_trainer()
    from defectloop.trainer import api

    sink = _progress_sink("reproducing")
    try:
        report = api.reproduce(version, out, progress=sink)
    finally:
        sink.stop()  # type: ignore[attr-defined]
    table = Table(title=f"reproduction of {version}")
    table.add_column("metric")
    table.add_column("recorded", justify="right")
    table.add_column("reproduced", justify="right")
    for key in sorted(set(report.recorded_metrics) | set(report.new_metrics)):
        a, b = report.recorded_metrics.get(key), report.new_metrics.get(key)
        table.add_row(key, "-" if a is None else f"{a:.4f}", "-" if b is None else f"{b:.4f}")
    console.print(table)
    if report.identical:
        console.print(f"[green]identical[/green]: model.onnx sha256 {report.new_sha256}")
    else:
        console.print(
            f"[red]different[/red]: recorded {report.recorded_sha256}, got {report.new_sha256}"
        )
        raise typer.Exit(code=1)


def models_app() -> typer.Typer:
    """The `models` group; other modules may add commands (promote, approve, rollback) to it."""
    from defectloop.cli.deploy_cmd import models_deploy
    from defectloop.cli.governance_cmd import add_models_commands
    from defectloop.cli.why_cmd import add_models_commands as add_why_commands

    models = typer.Typer(
        help="The model registry: list, show, reproduce, deploy.", no_args_is_help=True
    )
    models.command("list")(models_list)
    models.command("deploy")(models_deploy)
    models.command("show")(models_show)
    models.command("reproduce")(models_reproduce)
    add_models_commands(models)
    add_why_commands(models)
    return models


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""
    app.command("train")(train_cmd)
    app.add_typer(models_app(), name="models")
