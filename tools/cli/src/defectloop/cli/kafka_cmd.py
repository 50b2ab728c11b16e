"""`defectloop kafka start|stop|status`: the local single-node broker."""

from __future__ import annotations

import asyncio
import contextlib
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

    @kafka.command("route-decisions")
    def route_decisions() -> None:
        """Copy each champion decision of prediction.made to decisions.<site> (the MES's topics,
        docs/security.md) until interrupted; as user decisions-router on a secured broker."""
        from defectloop.common.decisions import DecisionFanOut

        layout = kafka_local.default_layout()
        creds = kafka_local.credentials(layout)["decisions-router"] if layout.secured else None

        async def run() -> None:
            router = DecisionFanOut(layout.bootstrap, credentials=creds)
            await router.start()
            try:
                while True:
                    if await router.step():
                        console.print(f"decisions copied: {router.copied}", end="\r")
            finally:
                await router.stop()

        console.print(f"routing prediction.made -> decisions.<site> on {layout.bootstrap}")
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run())

    @kafka.command("credentials")
    def show_credentials(
        principal: str = typer.Argument(help="e.g. mes-A, inference, decisions-router."),
    ) -> None:
        """Print the SASL/SCRAM client settings of a principal of the secured (production) broker."""
        layout = kafka_local.default_layout()
        if not layout.secured:
            console.print("this broker has no credentials (DEFECTLOOP_KAFKA_PROFILE=production)")
            raise typer.Exit(1)
        known = kafka_local.credentials(layout)
        if principal not in known:
            console.print(f"unknown principal {principal!r}; known: {', '.join(sorted(known))}")
            raise typer.Exit(1)
        print(
            f"bootstrap.servers={layout.bootstrap}\nsecurity.protocol=SASL_PLAINTEXT\n"
            f"sasl.mechanism={known[principal].mechanism}\nsasl.username={principal}\n"
            f"sasl.password={known[principal].password}"
        )

    app.add_typer(kafka, name="kafka")
