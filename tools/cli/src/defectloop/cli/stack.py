"""`defectloop up|down|status|demo`: the whole local stack."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from defectloop.cli import kafka_local, labelstudio_local, supervisor
from defectloop.common.errors import DefectloopError
from defectloop.common.paths import state_home

console = Console()


DEFAULT_SITES = "A"


def stack_sites(sites: str | None = None) -> list[str]:
    """The sites the local stack serves: ``--sites``, else ``$DEFECTLOOP_SITES``, else A."""
    raw = sites or os.environ.get("DEFECTLOOP_SITES", DEFAULT_SITES)
    return [s.strip() for s in raw.split(",") if s.strip()]


def ensure_models(sites: list[str], bootstrap: str) -> None:
    """A site with no champion gets its bootstrap model (trained once, cached) deployed."""
    from defectloop.cli.bootstrap import bootstrap_bundle
    from defectloop.cli.errors import require_trainer
    from defectloop.common.events import ModelRole

    require_trainer()
    from defectloop.trainer import api

    for site in sites:
        active = api.active_champion(site)
        if active is not None:
            console.print(f"[green]✓[/green] site {site}: model {active}")
            continue
        bundle = bootstrap_bundle(site, say=lambda msg: console.print(f"[dim]· {msg}[/dim]"))
        event = api.deploy(
            bundle,
            site=site,
            role=ModelRole.CHAMPION,
            bootstrap=bootstrap,
            reason="bootstrap model: the site had none",
        )
        console.print(
            f"[green]✓[/green] site {site}: deployed bootstrap model {event.model_version}"
        )


def stack_up(sites: list[str] | None = None) -> None:
    layout = kafka_local.default_layout()
    with console.status("starting Kafka..."):
        kafka_local.start(layout)
    console.print(f"[green]✓[/green] kafka {layout.bootstrap}")
    studio = labelstudio_local.default_layout()
    with console.status(
        "starting Label Studio (the very first start runs its migrations: ~2 min)..."
    ):
        labelstudio_local.start(studio)
    console.print(f"[green]✓[/green] label-studio {studio.url}")
    site_list = sites or stack_sites()
    for spec in supervisor.SERVICES:
        env = {}
        if spec.name == "annotation-sync":  # one Label Studio project per site, made at start
            env["DEFECTLOOP_ANNOTATION_SYNC_SITES"] = json.dumps(site_list)
            env.update(labelstudio_local.annotation_sync_env(studio, site_list))
        supervisor.start_service(spec, env=env)
    for spec in supervisor.SERVICES:
        with console.status(f"waiting for {spec.name} to report healthy..."):
            supervisor.wait_healthy(spec)
        console.print(f"[green]✓[/green] {spec.name} http://127.0.0.1:{spec.port}/health")
    ensure_models(site_list, layout.bootstrap)


def stack_down() -> None:
    for spec in reversed(supervisor.SERVICES):
        if supervisor.stop_service(spec):
            console.print(f"stopped {spec.name}")
    if labelstudio_local.stop(labelstudio_local.default_layout()):
        console.print("stopped label-studio")
    if kafka_local.stop(kafka_local.default_layout()):
        console.print("stopped kafka")


def status_table() -> tuple[Table, bool]:
    table = Table(title=f"defectloop stack ({state_home()})")
    for col in ("component", "pid", "address", "health"):
        table.add_column(col)
    layout = kafka_local.default_layout()
    kafka_up = kafka_local.is_running(layout)
    all_up = kafka_up
    table.add_row(
        "kafka",
        str(kafka_local.read_pid(layout) or "-"),
        layout.bootstrap,
        "up" if kafka_up else "down",
    )
    studio = labelstudio_local.default_layout()
    studio_up = labelstudio_local.is_running(studio)
    all_up = all_up and studio_up
    table.add_row(
        "label-studio",
        str(labelstudio_local.read_pid(studio) or "-"),
        studio.url,
        "up" if studio_up else "down",
    )
    for spec in supervisor.SERVICES:
        body = supervisor.health(spec)
        all_up = all_up and body is not None
        table.add_row(
            spec.name,
            str(supervisor.service_pid(spec) or "-"),
            f"http://127.0.0.1:{spec.port}",
            "healthy" if body else "down",
        )
    return table, all_up


def read_outcomes(bootstrap: str, sites: list[str]) -> dict[str, Any]:
    """What the demo produced, read back from Kafka: decisions and annotations per site."""
    import asyncio

    from defectloop.common import topics
    from defectloop.common.events import AnnotationCompleted, PredictionMade
    from defectloop.common.kafka_read import read_events

    async def read() -> dict[str, Any]:
        decisions = await read_events(
            bootstrap,
            topics.PREDICTION_MADE,
            model=PredictionMade,
            where=lambda p: p.site_id in sites and p.role.value == "champion",
        )
        annotations = await read_events(
            bootstrap,
            topics.ANNOTATION_COMPLETED,
            model=AnnotationCompleted,
            where=lambda a: a.site_id in sites,
        )
        return {"decisions": decisions, "annotations": annotations}

    return asyncio.run(read())


def show_outcomes(bootstrap: str, sites: list[str]) -> None:
    outcome = read_outcomes(bootstrap, sites)
    decisions = sorted(outcome["decisions"], key=lambda p: p.occurred_at)
    table = Table(title="latest decisions on prediction.made (what the MES receives)")
    for col in ("site", "camera", "image", "decision", "score", "defects", "model", "latency"):
        table.add_column(col)
    for p in decisions[-12:]:
        table.add_row(
            p.site_id,
            p.camera_id,
            p.image_id[:8],
            "[red]DIVERT[/red]" if p.defective else "[green]PASS[/green]",
            f"{p.decision_score:.2f}",
            ",".join(sorted({b.label for b in p.boxes})) or "-",
            p.model_version,
            f"{p.queue_latency_ms + p.inference_latency_ms:.0f} ms",
        )
    console.print(table)
    defective = sum(p.defective for p in decisions)
    done = [a for a in outcome["annotations"] if a.status.value == "completed"]
    console.print(
        f"{len(decisions)} decisions ({defective} divert), "
        f"{len(done)} annotations completed, "
        f"{len(outcome['annotations']) - len(done)} skipped by annotators"
    )


DEMO_NEXT = """\
[bold]Look around[/bold]
  Label Studio (annotators' view):  {ls_url}   user {email} / password {password}
  annotation progress:               http://127.0.0.1:8083/v1/sites/{site}/annotation/progress
  ingest API (OpenAPI):              http://127.0.0.1:8081/docs
  models serving each site:          http://127.0.0.1:8082/v1/models
  MES client example:                .venv/bin/python examples/mes_consumer.py --site {site}
  monitor (per-site figures, drift):  http://127.0.0.1:8084/v1/sites/{site}   or `defectloop monitor status`
  trainer (retraining jobs):          http://127.0.0.1:8085/v1/jobs            or `defectloop models jobs`
  logs and state:                    {logs}

The monitor joins these annotations with the predictions and watches drift and data quality (try
--drift blur:100 for a camera's data-quality alert); the trainer reacts to a performance incident
by waiting for fresh labels, retraining, gating and shadowing (docs/monitor.md, docs/trainer.md).
A demo that runs the whole loop until a site recovers is the next issue.
"""


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up(
        sites: str | None = typer.Option(
            None, help="Sites to serve (default: $DEFECTLOOP_SITES or A)."
        ),
    ) -> None:
        """Start Kafka, Label Studio and the five services in the background; deploy models."""
        stack_up(stack_sites(sites))

    @app.command("down")
    def down() -> None:
        """Stop the services and Kafka by their process ids."""
        stack_down()

    @app.command("status")
    def status() -> None:
        """Show each component; exit 1 if any is down."""
        table, all_up = status_table()
        console.print(table)
        if not all_up:
            raise typer.Exit(1)

    @app.command("demo")
    def demo(
        sites: str | None = typer.Option(
            None, help="Sites to simulate (default: $DEFECTLOOP_SITES or A)."
        ),
        duration: float = typer.Option(45.0, min=5.0, help="Seconds of simulated production."),
        rate: float = typer.Option(2.0, min=0.1, help="Frames per second per camera."),
        drift: list[str] | None = typer.Option(
            None, metavar="KIND[:START[:SEVERITY]]", help="Drift to inject (repeatable)."
        ),
        keep: bool = typer.Option(False, help="Leave the stack running at the end."),
    ) -> None:
        """Start the stack, run simulated cameras and annotators, show the decisions."""
        site_list = stack_sites(sites)
        try:
            stack_up(site_list)
            run_demo(site_list, duration=duration, rate=rate, drift=drift)
            if keep:
                console.print("the stack keeps running: `defectloop down` stops it")
            elif console.is_terminal:
                console.print("[dim]Ctrl-C stops the stack.[/dim]")
                while True:
                    time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            if not keep:
                stack_down()


def show_monitor(sites: list[str]) -> None:
    """What the monitor says of each site now (its figures need random labels: few in a demo)."""
    from defectloop.cli import monitor_cmd

    console.rule("monitor: each site's model, measured from the random-stratum labels")
    try:
        summaries = monitor_cmd.fetch_status(monitor_cmd.DEFAULT_URL, None)
    except DefectloopError as exc:
        console.print(f"monitor not reachable: {exc}")
        return
    monitor_cmd.render([s for s in summaries if s.get("site_id") in sites] or summaries)


def run_demo(sites: list[str], *, duration: float, rate: float, drift: list[str] | None) -> None:
    """Simulated cameras and annotators against the running stack, then what came out."""
    from defectloop.cli import simulate

    table, _ = status_table()
    console.print(table)
    console.rule("simulated cameras → ingest → Kafka → inference → prediction.made → annotators")
    simulate.run(
        sites=",".join(sites),
        rate=rate,
        duration=duration,
        cameras=2,
        annotators=2,
        annotation_rate=1.0,
        drift=drift,
    )
    show_outcomes(kafka_local.default_layout().bootstrap, sites)
    show_monitor(sites)
    studio = labelstudio_local.default_layout()
    creds = labelstudio_local.credentials(studio)
    console.print(
        DEMO_NEXT.format(
            ls_url=studio.url,
            email=creds["email"],
            password=creds["password"],
            site=sites[0],
            logs=supervisor.log_dir().parent,
        )
    )
