"""`defectloop kafka start|stop|status`: the local single-node broker."""

from __future__ import annotations

import time

import typer
from rich.console import Console

from defectloop.cli import kafka_local

console = Console()


def register(app: typer.Typer) -> None:
    kafka = typer.Typer(
        help="Run a real local Apache Kafka broker (KRaft, from Maven Central jars)."
    )

    @kafka.command("start")
    def start(
        partitions: int = typer.Option(6, min=1, help="Partitions per event topic."),
        timeout: float = typer.Option(
            120.0, help="Seconds to wait for the broker to accept clients."
        ),
    ) -> None:
        """Start the broker (idempotent) and create the topics; returns when clients can connect."""
        layout = kafka_local.default_layout()
        began = time.monotonic()
        with console.status("starting Kafka (first run fetches its jars with Maven)..."):
            started = kafka_local.start(layout, timeout_s=timeout, partitions=partitions)
        verb = f"started in {time.monotonic() - began:.1f} s" if started else "already running"
        console.print(f"kafka {verb}: [bold]{layout.bootstrap}[/bold]")

    @kafka.command("stop")
    def stop() -> None:
        """Stop the broker cleanly by its process id."""
        layout = kafka_local.default_layout()
        if kafka_local.stop(layout):
            console.print("kafka stopped")
        else:
            console.print("kafka was not running")

    @kafka.command("status")
    def status() -> None:
        """Exit 0 when the broker is up and accepting clients, 1 otherwise."""
        layout = kafka_local.default_layout()
        if kafka_local.is_running(layout):
            console.print(f"kafka up: {layout.bootstrap} (pid {kafka_local.read_pid(layout)})")
            return
        console.print("kafka down")
        raise typer.Exit(1)

    app.add_typer(kafka, name="kafka")
