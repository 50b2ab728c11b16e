"""Per-message (FastStream middleware) and per-request (ASGI middleware) log context."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fastapi import FastAPI
from faststream.kafka import KafkaBroker, TestKafkaBroker
from structlog.contextvars import get_contextvars, merge_contextvars
from structlog.testing import capture_logs

from defectloop.common import logging as dl_logging
from defectloop.common import topics
from defectloop.common.events import ImageCaptured, QualityMetrics, image_id_for
from defectloop.common.kafka import build_broker, event_subscriber, publish_event
from defectloop.common.kafka_admin import ensure_topics
from defectloop.common.logging import ensure_logging, get_logger
from defectloop.common.service import build_service_app
from defectloop.common.settings import ServiceSettings
from defectloop.common.topics import TopicSpec
from defectloop.testing.net import wait_until

log = get_logger(__name__)


def _image(site: str) -> ImageCaptured:
    digest = uuid.uuid4().hex * 2
    return ImageCaptured(
        site_id=site,
        camera_id="cam-7",
        image_id=image_id_for(site, "cam-7", digest),
        sha256=digest,
        blob_uri=f"file:///blobs/{digest}.png",
        captured_at=datetime.now(UTC),
        width=8,
        height=8,
        quality=QualityMetrics(sharpness=1.0, brightness=1.0, contrast=1.0, uniform=False),
    )


def _lines(captured: Sequence[MutableMapping[str, Any]], event: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in captured if entry["event"] == event]


def _subscribe_logging(broker: KafkaBroker, topic: str, group: str | None = None) -> None:
    @broker.subscriber(topic, group_id=group, auto_offset_reset="earliest")
    async def handle(body: dict[str, Any]) -> None:
        log.info("handled_in_test", seen=body["image_id"])


@pytest.mark.unit
async def test_a_line_logged_in_a_handler_carries_the_message_and_event_ids() -> None:
    broker = build_broker("127.0.0.1:9092", client_id="log-context-unit")
    _subscribe_logging(broker, topics.IMAGE_CAPTURED)
    event = _image("logctx")
    with capture_logs(processors=[merge_contextvars]) as captured:
        async with TestKafkaBroker(broker) as test_broker:
            await publish_event(test_broker, event)
    (line,) = _lines(captured, "handled_in_test")
    assert {k: line.get(k) for k in ("topic", "event_id", "site_id", "camera_id", "image_id")} == {
        "topic": topics.IMAGE_CAPTURED,
        "event_id": event.event_id,
        "site_id": event.site_id,
        "camera_id": event.camera_id,
        "image_id": event.image_id,
    }
    assert isinstance(line["partition"], int)
    assert isinstance(line["offset"], int)


@pytest.mark.unit
async def test_the_services_event_subscriber_gets_the_same_context() -> None:
    broker = build_broker("127.0.0.1:9092", client_id="log-context-unit")

    @event_subscriber(broker, topics.IMAGE_CAPTURED, group_id="logctx", service="logctx")
    async def handle(event: ImageCaptured) -> None:
        log.info("service_handled")

    event = _image("logctx-service")
    with capture_logs(processors=[merge_contextvars]) as captured:
        async with TestKafkaBroker(broker) as test_broker:
            await publish_event(test_broker, event)
    (line,) = _lines(captured, "service_handled")
    assert (line["topic"], line["event_id"], line["image_id"]) == (
        topics.IMAGE_CAPTURED,
        event.event_id,
        event.image_id,
    )


@pytest.mark.unit
async def test_the_context_is_unbound_after_the_handler() -> None:
    broker = build_broker("127.0.0.1:9092", client_id="log-context-unit")
    _subscribe_logging(broker, topics.IMAGE_CAPTURED)
    async with TestKafkaBroker(broker) as test_broker:
        await publish_event(test_broker, _image("logctx"))
    assert get_contextvars() == {}


@pytest.mark.unit
async def test_a_body_that_is_not_json_still_reaches_the_handler_with_its_coordinates() -> None:
    broker = build_broker("127.0.0.1:9092", client_id="log-context-unit")
    topic = f"logctx-raw-{uuid.uuid4().hex[:8]}"

    @broker.subscriber(topic)
    async def handle(body: bytes) -> None:
        log.info("raw_handled", size=len(body))

    with capture_logs(processors=[merge_contextvars]) as captured:
        async with TestKafkaBroker(broker) as test_broker:
            await test_broker.publish(b"\xff not json", topic=topic)
    (line,) = _lines(captured, "raw_handled")
    assert (line["topic"], "site_id" in line) == (topic, False)


@pytest.mark.integration
async def test_on_the_real_broker_the_line_carries_the_records_partition_and_offset(
    kafka_bootstrap: str, unique_group: str
) -> None:
    topic = f"logctx-{uuid.uuid4().hex[:8]}"
    await ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    producer = build_broker(kafka_bootstrap, client_id="log-context-producer")
    consumer = build_broker(kafka_bootstrap, client_id="log-context-consumer")
    _subscribe_logging(consumer, topic, unique_group)
    event = _image("logctx-real")
    with capture_logs(processors=[merge_contextvars]) as captured:
        async with producer, consumer:
            await producer.start()
            metadata = await producer.publish(
                event.model_dump_json().encode(), topic=topic, key=event.key()
            )
            await consumer.start()

            async def handled() -> list[MutableMapping[str, Any]]:
                return _lines(captured, "handled_in_test")

            (line,) = await wait_until(handled, timeout_s=60, what="the handler's log line")
    assert (line["topic"], line["partition"], line["offset"], line["image_id"]) == (
        topic,
        metadata.partition,
        metadata.offset,
        event.image_id,
    )


@pytest.fixture
def http_app() -> FastAPI:
    settings = ServiceSettings(service_name="logctx")
    app = build_service_app(settings, broker=KafkaBroker("127.0.0.1:9"))

    @app.get("/sites/{site}/cameras/{camera}")
    async def probe(site: str, camera: str) -> dict[str, str]:
        log.info("route_handled")
        return {"ok": "yes"}

    @app.get("/plain")
    def plain() -> dict[str, str]:
        log.info("sync_route_handled")
        return {"ok": "yes"}

    return app


@pytest.mark.unit
async def test_a_line_logged_in_a_route_carries_the_request_and_path_ids(http_app: FastAPI) -> None:
    trace_id = uuid.uuid4().hex
    headers = {"x-request-id": "req-42", "traceparent": f"00-{trace_id}-{'1' * 16}-01"}
    transport = httpx.ASGITransport(app=http_app)
    with capture_logs(processors=[merge_contextvars]) as captured:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.get("/sites/B/cameras/cam-3", headers=headers)
    assert response.status_code == 200
    (line,) = _lines(captured, "route_handled")
    assert {
        k: line.get(k)
        for k in ("request_id", "method", "path", "trace_id", "site_id", "camera_id")
    } == {
        "request_id": "req-42",
        "method": "GET",
        "path": "/sites/B/cameras/cam-3",
        "trace_id": trace_id,
        "site_id": "B",
        "camera_id": "cam-3",
    }
    # The request's context ends with it, also for an in-process caller sharing the task.
    assert get_contextvars() == {}


@pytest.mark.unit
async def test_a_sync_route_gets_a_new_request_id_when_the_caller_sends_none(
    http_app: FastAPI,
) -> None:
    transport = httpx.ASGITransport(app=http_app)
    with capture_logs(processors=[merge_contextvars]) as captured:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await asyncio.gather(client.get("/plain"), client.get("/plain"))
    ids = {line["request_id"] for line in _lines(captured, "sync_route_handled")}
    assert len(ids) == 2
    assert all(len(i) == 32 for i in ids)


@contextmanager
def bare_logging() -> Iterator[logging.Logger]:
    """Logging as nobody configured it (as under ``uvicorn --factory``), restored afterwards.

    Entered in the test body: pytest puts its capture handlers on the root logger per phase.
    """
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    saved_configured = dl_logging._configured
    root.handlers[:] = []
    dl_logging._configured = False
    try:
        yield root
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        dl_logging._configured = saved_configured
        structlog.reset_defaults()


@pytest.mark.unit
def test_ensure_logging_configures_once_when_nobody_did() -> None:
    with bare_logging() as root:
        assert ensure_logging("svc", fmt="json", level="WARNING") is True
        assert isinstance(root.handlers[0].formatter, structlog.stdlib.ProcessorFormatter)
        assert root.level == logging.WARNING
        assert ensure_logging("svc", fmt="console", level="DEBUG") is False
        assert root.level == logging.WARNING


@pytest.mark.unit
def test_ensure_logging_leaves_a_configured_root_logger_alone() -> None:
    # pytest's log capture handlers are on the root logger during a test.
    before = logging.getLogger().handlers[:]
    assert ensure_logging("svc") is False
    assert logging.getLogger().handlers == before


@pytest.mark.unit
def test_the_uvicorn_factory_path_logs_through_structlog_json(tmp_path: Path) -> None:
    # A fresh interpreter, as uvicorn --factory: nothing configured logging before create_app().
    code = (
        "import logging\n"
        "from defectloop.monitor.main import create_app\n"
        "create_app()\n"
        "logging.getLogger('probe').warning('factory_probe')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=tmp_path,
        env={"DEFECTLOOP_LOG_FORMAT": "json", "DEFECTLOOP_HOME": str(tmp_path), "PATH": "/bin"},
    )
    probe = [ln for ln in run.stderr.splitlines() if "factory_probe" in ln]
    assert len(probe) == 1
    assert '"service": "monitor"' in probe[0]
