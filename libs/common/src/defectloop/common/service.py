"""The HTTP shell every service shares: a FastAPI app that owns the broker's lifecycle.

Services build their app in ``build_app(settings)``; nothing is built at import time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from faststream.kafka import KafkaBroker
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from defectloop.common.http_errors import DEFAULT_RETRY_AFTER_S, install_error_handlers
from defectloop.common.http_log_context import install_http_log_context
from defectloop.common.kafka import broker_credentials, build_broker
from defectloop.common.kafka_auth import check_login
from defectloop.common.kafka_connection import BackgroundConnection
from defectloop.common.logging import configure_logging, ensure_logging, get_logger
from defectloop.common.metrics import HTTP_REQUESTS, REGISTRY, refresh_consumer_lag
from defectloop.common.settings import ServiceSettings
from defectloop.common.tracing import tracer_provider_for

log = get_logger(__name__)

Hook = Callable[[], Awaitable[None]]
SettingsT = TypeVar("SettingsT", bound=ServiceSettings)


def broker_from_settings(settings: ServiceSettings) -> KafkaBroker:
    return build_broker(
        settings.kafka_bootstrap,
        client_id=settings.service_name,
        tracer_provider=tracer_provider_for(settings),
        request_timeout_ms=settings.kafka_request_timeout_ms,
        credentials=settings.kafka_credentials(),
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
    metrics_refresh: list[Hook] | None = None,
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

    Observability (docs/observability.md): every request but ``/health`` and ``/metrics`` is a
    server span of the service's tracer (a caller's ``traceparent`` is its parent) and one
    ``http_request`` log line; ``GET /metrics`` serves the Prometheus registry, after the
    consumers' lag and the ``metrics_refresh`` hooks (gauges read from a store) are brought up
    to date.
    """
    service = settings.service_name
    # uvicorn --factory reaches here without serve(): configure logging unless already done.
    ensure_logging(service, fmt=settings.log_format, level=settings.log_level)
    kafka = broker if broker is not None else broker_from_settings(settings)
    connection = (
        BackgroundConnection(
            kafka, bootstrap=settings.kafka_bootstrap, retry_max_s=connect_retry_max_s
        )
        if start_without_broker
        else None
    )
    starting: list[Hook] = [*(before_start or []), kafka.start, *(on_startup or [])]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if connection is not None:
            connection.start(then=starting)
        else:
            try:
                await kafka.connect()
            except Exception:
                # A refused login fails the start with its own reason, not "unreachable".
                await check_login(settings.kafka_bootstrap, broker_credentials(kafka))
                raise
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
                # The last spans (the graceful stop's) go out before the process ends.
                await asyncio.to_thread(tracer_provider_for(settings).force_flush, 5_000)
            log.info("service_stopped", service=service)

    app = FastAPI(title=f"defectloop {service}", lifespan=lifespan, **fastapi_kwargs)
    app.state.broker = kafka
    app.state.connection = connection
    app.state.settings = settings
    install_error_handlers(app, retry_after_s=retry_after_s)
    # Inside the log context (added after it = nearer the app): the line carries request_id.
    app.add_middleware(RequestLineMiddleware, service=service)
    install_http_log_context(app)  # before any route: routes take the router's dependencies
    FastAPIInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider_for(settings),
        excluded_urls="/health,/metrics",
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics (text exposition format); see docs/observability.md."""
        await refresh_consumer_lag(kafka, service)
        for hook in metrics_refresh or []:
            await hook()
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

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


def _route_template(scope: Scope) -> str:
    """The matched route's path template (bounded label values), not the concrete path: the
    router records the route it matched in the request's scope."""
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))


class RequestLineMiddleware:
    """One canonical ``http_request`` log line and one counter per request (pure ASGI, so the
    request body still streams); ``/health`` and ``/metrics`` are left out (probes, scrapes)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in ("/health", "/metrics"):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # unless a response starts: an exception escaping the app is a 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        finally:
            route = _route_template(scope)
            HTTP_REQUESTS.labels(self.service, scope["method"], route, str(status)).inc()
            log.info(
                "http_request",
                route=route,
                status=status,
                duration_ms=round((time.perf_counter() - start) * 1000.0, 2),
            )


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
