"""Entry point of the monitor service: ``python -m defectloop.monitor.main``.

The app records the five consumed topics (``handlers.py``), evaluates every site periodically in
a worker thread (``evaluate.py``: the database work and the statistics never block the event
loop), publishes what the evaluation decided through the store's outbox, and serves the JSON API
(``api.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy import Engine

from defectloop.common.db import make_engine
from defectloop.common.logging import get_logger
from defectloop.common.metrics import set_incidents_open
from defectloop.common.service import broker_from_settings, build_service_app, serve
from defectloop.monitor import api, handlers
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

log = get_logger(__name__)


def build_app(
    settings: MonitorSettings,
    *,
    broker: KafkaBroker | None = None,
    engine: Engine | None = None,
    group_id: str = handlers.GROUP_ID,
) -> FastAPI:
    kafka = broker if broker is not None else broker_from_settings(settings)
    store = MonitorStore(
        engine if engine is not None else make_engine(settings.resolved_database_url())
    )
    evaluator = Evaluator(store, settings)
    handlers.subscribe(kafka, store, settings, group_id=group_id)
    loop_tasks: list[asyncio.Task[None]] = []

    async def evaluate_once() -> None:
        await asyncio.to_thread(evaluator.run_once, datetime.now(UTC))
        await handlers.publish_pending(kafka, store)

    async def evaluate_forever() -> None:
        while True:
            try:
                await evaluate_once()
            except Exception:  # the loop must outlive one bad evaluation; the next one retries
                log.exception("evaluation_failed")
            await asyncio.sleep(settings.evaluation_interval_s)  # the period, not a wait

    async def on_startup() -> None:
        await handlers.publish_pending(kafka, store)  # what a crash left unpublished
        loop_tasks.append(asyncio.create_task(evaluate_forever(), name="monitor-evaluate"))

    async def on_shutdown() -> None:
        for task in loop_tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def count_open_incidents() -> None:  # the gauge is read from the store at scrape
        open_now = await asyncio.to_thread(store.incidents, open_only=True)
        set_incidents_open((i.site_id, i.kind.value) for i in open_now)

    app = build_service_app(
        settings,
        broker=kafka,
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        metrics_refresh=[count_open_incidents],
    )
    app.state.store = store
    app.state.evaluator = evaluator
    api.install(app, store, settings)
    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.monitor.main:create_app``)."""
    return build_app(MonitorSettings())


if __name__ == "__main__":
    serve(build_app, MonitorSettings())
