"""Entry point of the ingest service: ``python -m defectloop.ingest.main``.

``build_app(settings)`` builds everything (nothing at import time) on the shared app shell,
started without waiting for the broker: the app serves while Kafka is down, uploads answer 503
``broker_unavailable`` and ``/health`` answers 503 ``degraded`` until Kafka is connected.
"""

from __future__ import annotations

from fastapi import FastAPI

from defectloop.common.blobstore import open_blob_store
from defectloop.common.kafka_connection import BackgroundConnection
from defectloop.common.service import build_service_app, serve
from defectloop.ingest.api import router
from defectloop.ingest.pipeline import Ingestor
from defectloop.ingest.publisher import EventPublisher
from defectloop.ingest.records import ImageStore, open_database
from defectloop.ingest.settings import IngestSettings


def build_app(settings: IngestSettings) -> FastAPI:
    engine = open_database(settings.resolved_database_url())

    async def close_database() -> None:
        engine.dispose()

    app = build_service_app(
        settings,
        start_without_broker=True,
        connect_retry_max_s=settings.kafka_connect_retry_s,
        retry_after_s=settings.retry_after_s,
        after_stop=[close_database],
        summary="HTTP endpoint for camera gateways: PNG frames in, image.captured out.",
        version="1",
    )
    connection: BackgroundConnection = app.state.connection
    publisher = EventPublisher(connection, publish_timeout_s=settings.publish_timeout_s)
    app.state.engine = engine
    app.state.publisher = publisher
    app.state.ingestor = Ingestor(
        settings,
        store=ImageStore(engine),
        blobs=open_blob_store(settings.blob_url),
        publisher=publisher,
    )
    app.include_router(router)
    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.ingest.main:create_app``)."""
    return build_app(IngestSettings())


if __name__ == "__main__":
    serve(build_app, IngestSettings())
