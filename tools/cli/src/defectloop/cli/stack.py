"""`defectloop up|down|status|demo`: the whole local stack."""

from __future__ import annotations

import time

import typer
from rich.console import Console
from rich.table import Table

from defectloop.cli import kafka_local, labelstudio_local, supervisor
from defectloop.common.paths import state_home

console = Console()


def stack_up() -> None:
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
    for spec in supervisor.SERVICES:
        supervisor.start_service(spec)
    for spec in supervisor.SERVICES:
        with console.status(f"waiting for {spec.name} to report healthy..."):
            supervisor.wait_healthy(spec)
        console.print(f"[green]✓[/green] {spec.name} http://127.0.0.1:{spec.port}/health")


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


DEMO_PLAN = """\
[bold]What runs now[/bold]: a real Kafka broker (KRaft) and the five services, each connected to
Kafka and healthy on its port. Logs: {logs}

[bold]What the full closed-loop demo will do[/bold] as the next issues land: simulated camera
gateways post images to ingest → inference publishes a decision per image (the MES contract) →
a sample goes to annotators in Label Studio → monitor measures each site's model → when a site
degrades (injected drift), trainer retrains from the current model, gates, registers and deploys.
"""


def register(app: typer.Typer) -> None:
    @app.command("up")
    def up() -> None:
        """Start Kafka and the five services in the background (logs under the state dir)."""
        stack_up()

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
        duration: float = typer.Option(
            0.0, help="Stop after this many seconds (0 = until Ctrl-C, or at once without a TTY)."
        ),
    ) -> None:
        """Start the stack, show it working, and stop it on Ctrl-C."""
        stack_up()
        table, _ = status_table()
        console.print(table)
        console.print(DEMO_PLAN.format(logs=supervisor.log_dir()))
        try:
            if duration > 0:
                time.sleep(duration)
            elif console.is_terminal:
                console.print("[dim]Ctrl-C stops the stack.[/dim]")
                while True:
                    time.sleep(1)
        except KeyboardInterrupt:
            pass
        finally:
            stack_down()
