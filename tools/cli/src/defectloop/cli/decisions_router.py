"""The decision router as a process of the stack: ``python -m defectloop.cli.decisions_router``.

It runs :class:`defectloop.common.decisions.DecisionFanOut` (``prediction.made`` -> one
``decisions.<site>`` topic per site, the MES contract of docs/security.md) in the app shell every
service uses, so ``defectloop up`` supervises it like the five services: a pid file, a log file,
``GET /health`` (Kafka reachable), ``GET /metrics`` and ``GET /v1/stats`` (decisions copied).

Why its own process rather than inside inference: the copy is a separate principal on the secured
bus (``decisions-router``: it reads ``prediction.made`` and writes ``decisions.*``), and
inference's principal may not write the MES's topics; one process per principal keeps each
password in the one process that needs it.

A batch that cannot be copied (a site without its ``decisions.<site>`` topic) stops the router
loudly: the batch is not committed, and copying later batches would skip it; as a process it
then exits, and ``defectloop status`` shows it down.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from functools import partial

from fastapi import FastAPI
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from defectloop.common.decisions import GROUP_ID, DecisionFanOut
from defectloop.common.logging import get_logger
from defectloop.common.service import build_service_app, serve
from defectloop.common.settings import ServiceSettings

log = get_logger(__name__)

PORT = 8086


class DecisionsRouterSettings(ServiceSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEFECTLOOP_DECISIONS_ROUTER_", extra="ignore", frozen=True
    )

    service_name: str = "decisions-router"
    port: int = PORT
    group_id: str = Field(
        GROUP_ID,
        min_length=1,
        description="Consumer group on prediction.made (the ACLs allow decisions-router and "
        "decisions-router.<anything>).",
    )


def build_app(settings: DecisionsRouterSettings, *, exit_on_failure: bool = False) -> FastAPI:
    """The router app; ``exit_on_failure``: a failed copy ends the process (``serve``)."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    # Made at start: aiokafka's clients must be created inside the running event loop.
    running: list[DecisionFanOut] = []

    async def copy(fan_out: DecisionFanOut) -> None:
        try:
            await fan_out.run(stop)
        except Exception:
            log.exception("decisions_router_failed", copied=fan_out.copied)
            if exit_on_failure:
                signal.raise_signal(signal.SIGTERM)  # uvicorn's graceful stop, then exit
            raise

    async def start_copying() -> None:
        fan_out = DecisionFanOut(
            settings.kafka_bootstrap,
            credentials=settings.kafka_credentials(),
            group_id=settings.group_id,
        )
        running.append(fan_out)
        await fan_out.start()
        loop = asyncio.get_running_loop()
        tasks.append(loop.create_task(copy(fan_out), name="decisions-router"))
        log.info("decisions_router_started", group_id=settings.group_id)

    async def stop_copying() -> None:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):  # its failure was logged where it happened
                await task
        for fan_out in running:
            await fan_out.stop()

    app = build_service_app(
        settings,
        on_startup=[start_copying],
        on_shutdown=[stop_copying],
        summary="Copies champion decisions of prediction.made to decisions.<site> (the MES).",
        version="1",
    )

    @app.get("/v1/stats", tags=["decisions"])
    async def stats() -> dict[str, object]:
        """Decisions copied and skipped (not champion, not a decision) since the start."""
        copied = sum(f.copied for f in running)
        skipped = sum(f.skipped for f in running)
        return {
            "copied": copied,
            "skipped": skipped,
            "running": bool(tasks) and not tasks[0].done(),
        }

    return app


def main() -> None:
    serve(partial(build_app, exit_on_failure=True), DecisionsRouterSettings())


if __name__ == "__main__":
    main()
