"""The HTTP shell every service shares: a FastAPI app that owns the broker's lifecycle.

Services build their app in ``build_app(settings)``; nothing is built at import time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker

from defectloop.common.http_errors import DEFAULT_RETRY_AFTER_S, install_error_handlers
from defectloop.common.http_log_context import install_http_log_context
from defectloop.common.kafka import build_broker
from defectloop.common.kafka_connection import BackgroundConnection
from defectloop.common.logging import configure_logging, ensure_logging, get_logger
from defectloop.common.settings import ServiceSettings
from defectloop.common.tracing import build_tracer_provider

log = get_logger(__name__)

Hook = Callable[[], Awaitable[None]]
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def broker_from_settings(settings: ServiceSettings) -> KafkaBroker:
    tracer = build_tracer_provider(
        settings.service_name, otlp_endpoint=settings.otlp_endpoint, trace_file=settings.trace_file
    )
    return build_broker(
        settings.kafka_bootstrap,
        client_id=settings.service_name,
        tracer_provider=tracer,
        request_timeout_ms=settings.kafka_request_timeout_ms,
    )


def build_service_app(
    settings: ServiceSettings,
    *,
    broker: KafkaBroker | None = None,
    before_start: list[Hook] | None = None,
    on_startup: list[Hook] | None = None,
    on_shutdown: list[Hook] | None = None,
    after_stop: list[Hook] | None = None,
    retry_after_s: int = DEFAULT_RETRY_AFTER_S,
    start_without_broker: bool = False,
    connect_retry_max_s: float = 10.0,
    **fastapi_kwargs: Any,
) -> FastAPI:
    """A FastAPI app whose lifespan starts/stops the broker and which serves ``GET /health``.

    Hooks, in order: broker connect (the producer: hooks may publish, e.g. dead letters),
    ``before_start`` (before subscribers consume: load what handlers need), broker start (the
    subscribers), ``on_startup``; at shutdown ``on_shutdown``, the broker's graceful stop
    (in-flight messages finish and commit), then ``after_stop`` (release what those handlers
    used).

    ``start_without_broker=True`` (ingest: it must answer while Kafka is down): the app serves at
    once; connecting is retried in the background with jittered backoff until Kafka answers, and
    only then run ``before_start``, the broker start and ``on_startup``. Until connected,
    ``/health`` answers 503 ``degraded``. ``app.state.connection`` is the
    :class:`~defectloop.common.kafka_connection.BackgroundConnection`: publish through its
    ``publish(event, timeout_s=...)``, which waits for the connection at most ``timeout_s`` and
    raises ``BrokerUnavailableError`` (answered 503 ``broker_unavailable`` with ``Retry-After``),
    and ``wait_connected(timeout)`` for tests; ``connect_retry_max_s`` caps the pause between
    connection attempts. Without the option, a broker that cannot be reached fails the start-up.

    Every error is answered with the one JSON body of :mod:`defectloop.common.http_errors`
    (``retry_after_s`` goes into the ``Retry-After`` header of a 503 for a transient error).
    """
    service = settings.service_name
    # uvicorn --factory reaches here without serve(): configure logging unless already done.
    ensure_logging(service, fmt=settings.log_format, level=settings.log_level)
    kafka = broker if broker is not None else broker_from_settings(settings)
    connection = (
        BackgroundConnection(kafka, retry_max_s=connect_retry_max_s)
        if start_without_broker
        else None
    )
    starting: list[Hook] = [*(before_start or []), kafka.start, *(on_startup or [])]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if connection is not None:
            connection.start(then=starting)
        else:
            await kafka.connect()
            for hook in starting:
                await hook()
        log.info("service_started", service=service, port=settings.port)
        try:
            yield
        finally:
            if connection is not None:
                await connection.stop()
            for hook in on_shutdown or []:
                await hook()
            try:
                await kafka.stop()
            finally:
                for hook in after_stop or []:
                    await hook()
            log.info("service_stopped", service=service)

    app = FastAPI(title=f"defectloop {service}", lifespan=lifespan, **fastapi_kwargs)
    app.state.broker = kafka
    app.state.connection = connection
    app.state.settings = settings
    install_error_handlers(app, retry_after_s=retry_after_s)
    install_http_log_context(app)  # before any route: routes take the router's dependencies

    @app.get("/health", tags=["ops"])
    async def health() -> JSONResponse:
        if connection is not None:
            kafka_ok = await connection.healthy()
        else:
            # Bounded here too: a ping that waits on the client (e.g. during a group rebalance)
            # must read as "not reachable now", never hang the health check.
            try:
                kafka_ok = await asyncio.wait_for(kafka.ping(timeout=2.0), timeout=3.0)
            except TimeoutError:
                kafka_ok = False
        body = {"service": service, "status": "ok" if kafka_ok else "degraded", "kafka": kafka_ok}
        return JSONResponse(body, status_code=200 if kafka_ok else 503)

    return app


def serve(build_app: Callable[[SettingsT], FastAPI], settings: SettingsT) -> None:
    """Run a service in the foreground until SIGINT/SIGTERM (graceful shutdown)."""
    import uvicorn

    configure_logging(settings.service_name, fmt=settings.log_format, level=settings.log_level)
    uvicorn.run(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=20,
    )
