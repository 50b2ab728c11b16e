"""Two FastStream apps over the real broker: delivery, trace propagation, and the DLQ."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import uuid
from collections.abc import AsyncIterator

import pytest
from faststream.kafka import KafkaBroker
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from defectloop.common import topics
from defectloop.common.errors import PermanentError
from defectloop.common.events import DeadLetter, ImageRejected, RejectReason
from defectloop.common.kafka import build_broker, event_subscriber, publish_event
from defectloop.common.tracing import build_tracer_provider
from defectloop.testing.kafka import collect

pytestmark = pytest.mark.integration


def _rejected(site: str, detail: str) -> ImageRejected:
    return ImageRejected(site_id=site, camera_id="cam-1", reason=RejectReason.EMPTY, detail=detail)


class Received:
    """Events a consumer handled, with a way to await a count (no sleeps)."""

    def __init__(self) -> None:
        self.events: list[ImageRejected] = []
        self._changed = asyncio.Condition()

    async def add(self, event: ImageRejected) -> None:
        async with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    async def wait_for(self, n: int, timeout: float = 60.0) -> None:
        async def _wait() -> None:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self.events) >= n)

        await asyncio.wait_for(_wait(), timeout)


@pytest.fixture
def site() -> str:
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[tuple[KafkaBroker, InMemorySpanExporter]]:
    spans = InMemorySpanExporter()
    broker = build_broker(
        kafka_bootstrap,
        client_id="producer-app",
        tracer_provider=build_tracer_provider("producer-app", exporter=spans),
    )
    await broker.start()
    yield broker, spans
    await broker.stop()


async def _dead_letters(
    bootstrap: str, site: str, n: int, timeout: float = 60.0
) -> list[DeadLetter]:
    topic = topics.dlq_topic(topics.IMAGE_REJECTED)
    async with collect(bootstrap, topic, where=lambda letter: letter.site_id == site) as letters:
        return list(await letters.wait_for(lambda found: len(found) >= n, timeout_s=timeout))


async def test_consumer_span_is_a_child_of_the_producer_span(
    kafka_bootstrap: str,
    producer: tuple[KafkaBroker, InMemorySpanExporter],
    unique_group: str,
    site: str,
) -> None:
    pub, producer_spans = producer
    consumer_spans = InMemorySpanExporter()
    received = Received()
    sub = build_broker(
        kafka_bootstrap,
        client_id="consumer-app",
        tracer_provider=build_tracer_provider("consumer-app", exporter=consumer_spans),
    )

    @event_subscriber(sub, topics.IMAGE_REJECTED, group_id=unique_group, service="consumer-app")
    async def handle(event: ImageRejected) -> None:
        if event.site_id == site:
            await received.add(event)

    await sub.start()
    try:
        sent = _rejected(site, "trace me")
        await publish_event(pub, sent)
        await received.wait_for(1)
    finally:
        await sub.stop()

    assert received.events == [sent]
    producer_side = producer_spans.get_finished_spans()
    assert producer_side, "the producer recorded no span"
    trace_id = producer_side[0].context.trace_id
    consumer_side = [
        s
        for s in consumer_spans.get_finished_spans()
        if s.kind == SpanKind.CONSUMER and s.context.trace_id == trace_id
    ]
    assert consumer_side, "no consumer span in the producer's trace"
    # FastStream records "create" then "publish" on the producer side; the consumer's span must
    # hang under one of them: the trace crossed the broker in the message headers.
    assert consumer_side[0].parent is not None
    assert consumer_side[0].parent.span_id in {s.context.span_id for s in producer_side}


async def test_poison_messages_go_to_the_dlq_and_the_partition_keeps_flowing(
    kafka_bootstrap: str,
    producer: tuple[KafkaBroker, InMemorySpanExporter],
    unique_group: str,
    site: str,
) -> None:
    pub, _ = producer
    received = Received()
    sub = build_broker(kafka_bootstrap, client_id="dlq-consumer")

    @event_subscriber(sub, topics.IMAGE_REJECTED, group_id=unique_group, service="dlq-consumer")
    async def handle(event: ImageRejected) -> None:
        if event.site_id != site:
            return
        if event.detail == "refuse me":
            raise PermanentError("this event can never be processed", reason="test_refusal")
        await received.add(event)

    key = f"{site}/cam-1".encode()
    await sub.start()
    try:
        await publish_event(pub, _rejected(site, "before"))
        await pub.publish(b"{not json", topic=topics.IMAGE_REJECTED, key=key)
        await publish_event(pub, _rejected(site, "refuse me"))
        await publish_event(pub, _rejected(site, "after"))
        await received.wait_for(2)
    finally:
        await sub.stop()

    assert [e.detail for e in received.events] == ["before", "after"]
    letters = await _dead_letters(kafka_bootstrap, site, 2)
    reasons = sorted(letter.reason for letter in letters)
    assert reasons == ["schema_violation", "test_refusal"]
    poison = next(letter for letter in letters if letter.reason == "schema_violation")
    assert base64.b64decode(poison.original_value_b64) == b"{not json"
    assert (poison.original_size, poison.original_value_kept) == (9, 9)
    assert poison.original_sha256 == hashlib.sha256(b"{not json").hexdigest()
    assert poison.source_topic == topics.IMAGE_REJECTED
    assert poison.service == "dlq-consumer"


async def test_a_message_with_undecodable_headers_is_still_handled(
    kafka_bootstrap: str,
    producer: tuple[KafkaBroker, InMemorySpanExporter],
    unique_group: str,
    site: str,
) -> None:
    from aiokafka import AIOKafkaProducer

    received = Received()
    sub = build_broker(kafka_bootstrap, client_id="header-consumer")

    @event_subscriber(sub, topics.IMAGE_REJECTED, group_id=unique_group, service="header-consumer")
    async def handle(event: ImageRejected) -> None:
        if event.site_id == site:
            await received.add(event)

    raw = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await raw.start()
    await sub.start()
    try:
        sent = _rejected(site, "odd headers")
        await raw.send_and_wait(
            topics.IMAGE_REJECTED,
            sent.model_dump_json().encode(),
            key=sent.key(),
            headers=[("x-binary", b"\xff\xfe"), ("x-none", None)],  # type: ignore[list-item]
        )
        await received.wait_for(1)
    finally:
        await sub.stop()
        await raw.stop()
    assert received.events == [sent]
