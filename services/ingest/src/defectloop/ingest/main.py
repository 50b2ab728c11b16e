"""Entry point of the ingest service: ``python -m defectloop.ingest.main``.

``build_app(settings)`` builds everything (nothing at import time). The app serves while Kafka is
down: the broker connects in the background, uploads answer 503 ``broker_unavailable`` and
``/health`` answers 503 ``degraded`` until it is connected.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker

from defectloop.common.blobstore import open_blob_store
from defectloop.common.http_errors import install_error_handlers
from defectloop.common.kafka import build_broker
from defectloop.common.logging import get_logger
from defectloop.common.service import serve
from defectloop.common.tracing import build_tracer_provider
from defectloop.ingest.api import router
from defectloop.ingest.pipeline import Ingestor
from defectloop.ingest.publisher import EventPublisher
from defectloop.ingest.records import ImageStore, open_database
from defectloop.ingest.settings import IngestSettings

log = get_logger(__name__)


def build_app(settings: IngestSettings) -> FastAPI:
    tracer = build_tracer_provider(
        settings.service_name, otlp_endpoint=settings.otlp_endpoint, trace_file=settings.trace_file
    )

    def new_broker() -> KafkaBroker:
        return build_broker(
            settings.kafka_bootstrap,
            client_id=settings.service_name,
            tracer_provider=tracer,
            request_timeout_ms=settings.kafka_request_timeout_ms,
        )

    engine = open_database(settings.resolved_database_url())
    publisher = EventPublisher(
        new_broker,
        publish_timeout_s=settings.publish_timeout_s,
        retry_s=settings.kafka_connect_retry_s,
    )
    ingestor = Ingestor(
        settings,
        store=ImageStore(engine),
        blobs=open_blob_store(settings.blob_url),
        publisher=publisher,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await publisher.start()
        log.info("service_started", service=settings.service_name, port=settings.port)
        try:
            yield
        finally:
            await publisher.stop()
            engine.dispose()
            log.info("service_stopped", service=settings.service_name)

    app = FastAPI(
        title="defectloop ingest",
        summary="HTTP endpoint for camera gateways: PNG frames in, image.captured out.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.publisher = publisher
    app.state.ingestor = ingestor
    app.include_router(router)
    install_error_handlers(app, retry_after_s=settings.retry_after_s)

    @app.get("/health", tags=["ops"], summary="200 ok when Kafka is connected, 503 degraded")
    async def health() -> JSONResponse:
        kafka_ok = await publisher.healthy()
        body = {
            "service": settings.service_name,
            "status": "ok" if kafka_ok else "degraded",
            "kafka": kafka_ok,
        }
        return JSONResponse(body, status_code=200 if kafka_ok else 503)

    return app


def create_app() -> FastAPI:
    """Factory for ASGI servers (``uvicorn --factory defectloop.ingest.main:create_app``)."""
    return build_app(IngestSettings())


if __name__ == "__main__":
    serve(build_app, IngestSettings())
