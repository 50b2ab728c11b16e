"""Entry point of the annotation-sync service: ``python -m defectloop.annotation_sync.main``."""

from __future__ import annotations

import asyncio
import contextlib

from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from sqlalchemy import Engine

from defectloop.annotation_sync import api, handlers
from defectloop.annotation_sync.projects import ClientFactory
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common.db import make_engine
from defectloop.common.errors import DefectloopError
from defectloop.common.logging import get_logger
from defectloop.common.service import broker_from_settings, build_service_app, serve

log = get_logger(__name__)


def build_app(
    settings: AnnotationSyncSettings,
    *,
    broker: KafkaBroker | None = None,
    engine: Engine | None = None,
    client_factory: ClientFactory | None = None,
    group_id: str = handlers.GROUP_ID,
) -> FastAPI:
    kafka = broker if broker is not None else broker_from_settings(settings)
    db = engine if engine is not None else make_engine(settings.resolved_database_url())
    sync = AnnotationSync(settings, db, handlers.publisher(kafka), client_factory=client_factory)
    handlers.subscribe(kafka, sync, group_id=group_id)
    background: list[asyncio.Task[None]] = []

    async def poll_forever() -> None:
        while True:
            try:
                await sync.republish_pending()
                for site in settings.sites:
                    await sync.registry.site(site)
                sync.pusher.wake()
                await sync.reconcile_all()
            except DefectloopError as exc:
                log.warning("reconcile_failed", reason=exc.reason, error=str(exc))
            except Exception:
                log.exception("reconcile_crashed")
            await asyncio.sleep(settings.poll_interval_s)  # the poll period, not synchronisation

    async def on_startup() -> None:
        await sync.republish_pending()
        background.append(asyncio.create_task(poll_forever(), name="annotation-sync-poll"))
        background.append(asyncio.create_task(sync.pusher.run(), name="annotation-sync-push"))

    async def on_shutdown() -> None:
        for task in background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await sync.aclose()

    app = build_service_app(
        settings, broker=kafka, on_startup=[on_startup], on_shutdown=[on_shutdown]
    )
    app.state.sync = sync
    api.install(app, sync)
    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.annotation_sync.main:create_app``)."""
    return build_app(AnnotationSyncSettings())


if __name__ == "__main__":
    serve(build_app, AnnotationSyncSettings())
