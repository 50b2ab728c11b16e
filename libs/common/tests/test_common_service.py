"""The shared app shell on the real broker: start order, and starting before Kafka is reachable."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from defectloop.common import topics
from defectloop.common.errors import BrokerUnavailableError
from defectloop.common.events import ImageRejected, RejectReason
from defectloop.common.kafka import build_broker, publish_event
from defectloop.common.kafka_connection import BackgroundConnection
from defectloop.common.kafka_read import read_events
from defectloop.common.service import broker_from_settings, build_service_app
from defectloop.common.settings import ServiceSettings
from defectloop.testing.kafka import TcpForwarder
from defectloop.testing.net import free_port

pytestmark = pytest.mark.integration


def _event(site: str) -> ImageRejected:
    return ImageRejected(site_id=site, camera_id="cam-1", reason=RejectReason.EMPTY, detail="x")


async def test_shell_serves_before_kafka_is_reachable_and_recovers_when_it_is(
    kafka_bootstrap: str,
) -> None:
    port = free_port()
    site = "sh" + uuid.uuid4().hex[:10]
    started: list[str] = []

    async def on_startup() -> None:
        started.append("on_startup")

    app = build_service_app(
        ServiceSettings(service_name="shell-test", kafka_bootstrap=f"127.0.0.1:{port}"),
        start_without_broker=True,
        on_startup=[on_startup],
    )
    connection = app.state.connection
    forwarder = TcpForwarder(port, kafka_bootstrap)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://shell") as client,
    ):
        down = await client.get("/health")
        with pytest.raises(BrokerUnavailableError):
            await connection.publish(_event(site), timeout_s=0.5)
        await forwarder.start()
        try:
            await connection.wait_connected(60)
            await connection.publish(_event(site), timeout_s=10)
            up = await client.get("/health")
        finally:
            await forwarder.stop()
    assert (down.status_code, down.json()["status"]) == (503, "degraded")
    assert (up.status_code, up.json()["status"]) == (200, "ok")
    assert started == ["on_startup"]
    found = await read_events(
        kafka_bootstrap, topics.IMAGE_REJECTED, where=lambda e: e.site_id == site
    )
    assert [e.site_id for e in found] == [site]


async def test_shell_connects_the_producer_before_the_before_start_hooks(
    kafka_bootstrap: str,
) -> None:
    site = "sh" + uuid.uuid4().hex[:10]
    settings = ServiceSettings(service_name="shell-test", kafka_bootstrap=kafka_bootstrap)
    broker = broker_from_settings(settings)

    async def publish_in_before_start() -> None:  # e.g. a table follower's dead letter
        await publish_event(broker, _event(site))

    app = build_service_app(settings, broker=broker, before_start=[publish_in_before_start])
    async with app.router.lifespan_context(app):
        pass
    found = await read_events(
        kafka_bootstrap, topics.IMAGE_REJECTED, where=lambda e: e.site_id == site
    )
    assert [e.site_id for e in found] == [site]


async def test_stopping_while_kafka_stays_unreachable_always_returns() -> None:
    # Shutdown must end the connection attempts whatever moment it lands on (an attempt in
    # flight, the backoff, an attempt failing in the same loop turn as the cancel).
    port = free_port()  # nothing listens there
    for cycle in range(20):
        broker = build_broker(f"127.0.0.1:{port}", client_id=f"stop-test-{cycle}")
        connection = BackgroundConnection(
            broker, attempt_timeout_s=2.0, retry_base_s=0.01, retry_max_s=0.05
        )
        connection.start()
        for _ in range(cycle):  # land the stop on a different point of the retry loop each time
            await asyncio.sleep(0)
        await asyncio.wait_for(connection.stop(), timeout=30)
        assert not connection.connected.is_set()
