"""``event_subscriber``'s routing, handler by handler, on FastStream's in-memory TestKafkaBroker.

Delivery, ordering and commits are claims about Kafka: they are tested on the real broker
(``test_common_kafka_roundtrip.py``). Here only what the wrapper does with one message.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import pytest
from faststream.kafka import KafkaBroker, TestKafkaBroker

from defectloop.common import topics
from defectloop.common.errors import PermanentError, TransientError
from defectloop.common.events import DeadLetter, ImageRejected, RejectReason
from defectloop.common.kafka import build_broker, event_subscriber, publish_event

pytestmark = pytest.mark.unit

Handler = Callable[[ImageRejected], Awaitable[None]]


def _rejected() -> ImageRejected:
    return ImageRejected(
        site_id="unit",
        camera_id="cam-1",
        reason=RejectReason.NOT_PNG,
        detail="magic bytes",
        size_bytes=uuid.uuid4().int % 1000,
    )


class Harness:
    """A broker whose ``image.rejected`` handler is ``handler``, and what reached the DLQ."""

    def __init__(self, handler: Handler) -> None:
        self.broker: KafkaBroker = build_broker("127.0.0.1:9092", client_id="unit")
        self.handled: list[ImageRejected] = []
        self.dead_letters: list[DeadLetter] = []

        @event_subscriber(
            self.broker,
            topics.IMAGE_REJECTED,
            group_id="unit",
            service="unit",
            transient_base_delay_s=0.0,
        )
        async def on_rejected(event: ImageRejected) -> None:
            await handler(event)
            self.handled.append(event)

        @self.broker.subscriber(topics.dlq_topic(topics.IMAGE_REJECTED))
        async def on_dead_letter(letter: DeadLetter) -> None:
            self.dead_letters.append(letter)


async def _accept(event: ImageRejected) -> None:
    return None


async def test_a_valid_event_reaches_the_handler_as_its_model() -> None:
    harness = Harness(_accept)
    event = _rejected()
    async with TestKafkaBroker(harness.broker) as broker:
        await publish_event(broker, event)
    assert (harness.handled, harness.dead_letters) == ([event], [])


async def test_a_schema_violation_is_dead_lettered_without_calling_the_handler() -> None:
    harness = Harness(_accept)
    async with TestKafkaBroker(harness.broker) as broker:
        await broker.publish(b'{"site_id": "unit"}', topic=topics.IMAGE_REJECTED, key=b"unit")
    assert harness.handled == []
    assert [(d.reason, d.source_topic, d.key) for d in harness.dead_letters] == [
        ("schema_violation", topics.IMAGE_REJECTED, "unit")
    ]


async def test_a_permanent_error_is_dead_lettered_with_its_reason() -> None:
    async def refuse(event: ImageRejected) -> None:
        raise PermanentError("cannot ever", reason="no_model")

    harness = Harness(refuse)
    async with TestKafkaBroker(harness.broker) as broker:
        await publish_event(broker, _rejected())
    assert [(d.reason, d.error) for d in harness.dead_letters] == [("no_model", "cannot ever")]


async def test_a_bug_is_parked_as_unhandled_error_naming_the_exception() -> None:
    async def crash(event: ImageRejected) -> None:
        raise KeyError("boom")

    harness = Harness(crash)
    async with TestKafkaBroker(harness.broker) as broker:
        await publish_event(broker, _rejected())
    assert [(d.reason, d.error) for d in harness.dead_letters] == [
        ("unhandled_error", "KeyError: 'boom'")
    ]


async def test_a_transient_error_is_retried_until_the_handler_succeeds() -> None:
    calls: list[int] = []

    async def flaky(event: ImageRejected) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise TransientError("dependency down")

    harness = Harness(flaky)
    event = _rejected()
    async with TestKafkaBroker(harness.broker) as broker:
        await publish_event(broker, event)
    assert (len(calls), harness.handled, harness.dead_letters) == (3, [event], [])
