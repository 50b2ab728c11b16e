"""Entry point of the ingest service: ``python -m defectloop.ingest.main``.

``build_app(settings)`` builds everything (nothing at import time) on the shared app shell,
started without waiting for the broker: the app serves while Kafka is down, uploads answer 503
``broker_unavailable`` and ``/health`` answers 503 ``degraded`` until Kafka is connected.
"""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.common import tracing
from defectloop.common.blobstore import open_blob_store
from defectloop.common.kafka_connection import BackgroundConnection
from defectloop.common.service import build_service_app, serve
from defectloop.ingest.api import router
from defectloop.ingest.outbox import ImageLocks, Republisher
from defectloop.ingest.pipeline import Ingestor
from defectloop.ingest.publisher import EventPublisher
from defectloop.ingest.ratelimit import UploadLimiter
from defectloop.ingest.records import ImageStore, open_database
from defectloop.ingest.settings import IngestSettings


def build_app(settings: IngestSettings) -> FastAPI:
    engine = open_database(settings.resolved_database_url())

    async def close_database() -> None:
        engine.dispose()

    # The outbox's republisher starts once Kafka is connected (what it publishes needs it) and
    # stops before the broker does. It is built below, on the shell's connection.
    async def start_outbox() -> None:
        await outbox.start()

    async def stop_outbox() -> None:
        await outbox.stop()

    app = build_service_app(
        settings,
        start_without_broker=True,
        connect_retry_max_s=settings.kafka_connect_retry_s,
        retry_after_s=settings.retry_after_s,
        on_startup=[start_outbox],
        on_shutdown=[stop_outbox],
        after_stop=[close_database],
        summary="HTTP endpoint for camera gateways: PNG frames in, image.captured out.",
        version="1",
    )
    connection: BackgroundConnection = app.state.connection
    publisher = EventPublisher(connection, publish_timeout_s=settings.publish_timeout_s)
    store = ImageStore(engine)
    outbox = Republisher(
        store,
        publisher,
        ImageLocks(),
        interval_s=settings.republish_interval_s,
        tracer=tracing.tracer_for(settings, "defectloop.ingest.outbox"),
    )
    app.state.engine = engine
    app.state.publisher = publisher
    app.state.outbox = outbox
    app.state.upload_limiter = UploadLimiter(
        per_token=settings.rate_limit_per_token,
        per_site=settings.rate_limit_per_site,
        sites={s: (lim.per_token, lim.per_site) for s, lim in settings.rate_limit_sites.items()},
        storage_uri=settings.rate_limit_storage,
    )
    app.state.ingestor = Ingestor(
        settings,
        store=store,
        blobs=open_blob_store(settings.blob_url),
        outbox=outbox,
    )
    app.include_router(router)
    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.ingest.main:create_app``)."""
    return build_app(IngestSettings())


if __name__ == "__main__":
    serve(build_app, IngestSettings())
