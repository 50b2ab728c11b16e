"""Kafka plumbing for FastStream with safe defaults (see shared notes, reliability §1-2).

FastStream's Kafka defaults are at-most-once (``ACK_FIRST`` = auto-commit before processing) and
the producer is not idempotent. Here:

- the producer is idempotent with ``acks=all``;
- consumers join an explicit group, start from the earliest offset, and commit only after the
  handler finished (``NACK_ON_ERROR``: success commits, a raised error seeks back and re-reads);
- a message that can never be processed (schema violation, a :class:`PermanentError`, an unexpected
  exception) goes to ``<topic>.dlq`` with its original bytes, headers and exactly one reason, and
  only then is committed, so the partition keeps flowing and nothing is lost;
- a :class:`TransientError` is retried with backoff in place; if it persists the message is not
  committed (it is re-read), never dropped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiokafka import ConsumerRecord
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from faststream.kafka.opentelemetry import KafkaTelemetryMiddleware
from faststream.security import BaseSecurity, SASLScram256, SASLScram512
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span
from pydantic import ValidationError

from defectloop.common.errors import ConfigError, PermanentError, TransientError
from defectloop.common.events import DeadLetter, Event, model_for_topic
from defectloop.common.kafka_auth import SCRAM_MECHANISM, ScramCredentials, resolve
from defectloop.common.log_context import KafkaLogContextMiddleware
from defectloop.common.logging import get_logger
from defectloop.common.metrics import DEAD_LETTERS
from defectloop.common.retry import call_with_backoff
from defectloop.common.topics import dlq_topic
from defectloop.common.tracing import in_span

EventT = TypeVar("EventT", bound=Event)
Handler = Callable[[EventT], Awaitable[None]]

log = get_logger(__name__)

# Who each broker built here logs in as: the clients a service builds beside its broker (the
# compacted-table reader) log in as the same principal without being handed the password again.
_LOGINS: weakref.WeakKeyDictionary[KafkaBroker, ScramCredentials] = weakref.WeakKeyDictionary()


def build_broker(
    bootstrap: str,
    *,
    client_id: str,
    tracer_provider: TracerProvider | None = None,
    request_timeout_ms: int = 10_000,
    graceful_timeout: float = 15.0,
    linger_ms: int = 0,
    credentials: ScramCredentials | None = None,
) -> KafkaBroker:
    """A FastStream Kafka broker with an idempotent producer and trace propagation.

    ``credentials``: its SASL/SCRAM login (default: the process's,
    :func:`defectloop.common.kafka_auth.credentials_from_env`; none = PLAINTEXT).
    """
    login = resolve(credentials)
    broker = KafkaBroker(
        bootstrap,
        security=_security(login),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
        graceful_timeout=graceful_timeout,
        ack_policy=AckPolicy.NACK_ON_ERROR,
        middlewares=(
            KafkaTelemetryMiddleware(tracer_provider=tracer_provider),
            KafkaLogContextMiddleware,  # topic/partition/offset and event ids on every line
        ),
        # Through the root handler (structlog JSON/console), not FastStream's own format; its
        # per-message "Received/Processed" lines go out at DEBUG so they cost nothing at INFO.
        logger=logging.getLogger("defectloop.faststream"),
        log_level=logging.DEBUG,
    )
    if login is not None:
        _LOGINS[broker] = login
    return broker


def _security(login: ScramCredentials | None) -> BaseSecurity | None:
    if login is None:
        return None
    if login.mechanism == "SCRAM-SHA-512":
        return SASLScram512(login.username, login.password)
    if login.mechanism != SCRAM_MECHANISM:
        raise ConfigError(
            f"unsupported SASL mechanism {login.mechanism!r}",
            hint=f"use {SCRAM_MECHANISM} (the production profile's) or SCRAM-SHA-512",
        )
    return SASLScram256(login.username, login.password)


def broker_credentials(broker: KafkaBroker) -> ScramCredentials | None:
    """The login of a broker made by :func:`build_broker` (None: anonymous, or made elsewhere)."""
    return _LOGINS.get(broker)


def event_headers(event: Event) -> dict[str, str]:
    """The headers every event carries (trace context is added by the telemetry middleware)."""
    return {"content-type": "application/json", "event-type": event.topic}


async def publish_event(broker: KafkaBroker, event: Event, *, topic: str | None = None) -> None:
    """Publish ``event`` on its topic, keyed for per-site/per-camera order; waits for the ack."""
    await broker.publish(
        event.model_dump_json().encode(),
        topic=topic or event.topic,
        key=event.key(),
        headers=event_headers(event),
    )


async def enqueue_event(broker: KafkaBroker, event: Event) -> asyncio.Future[Any]:
    """Hand ``event`` to the producer (per-partition order kept) and return its ack future.

    For a sender that must not wait on each ack (a batch, an open-loop load generator): await
    the returned futures later; an unacknowledged event raises there.
    """
    future: asyncio.Future[Any] = await broker.publish(
        event.model_dump_json().encode(),
        topic=event.topic,
        key=event.key(),
        headers=event_headers(event),
        no_confirm=True,
    )
    return future


async def publish_events(
    broker: KafkaBroker,
    events: Sequence[Event],
    *,
    span_of: Callable[[Event], Span | None] | None = None,
) -> None:
    """Publish every event on its topic and wait for all acknowledgements.

    Sends are enqueued one after the other (:func:`enqueue_event`: each await only hands the
    record to the producer, which keeps per-partition order), then the acknowledgements are
    awaited together: one broker round trip for the lot, not one per event.

    ``span_of(event)``: the span each event is published in (its ``traceparent`` then names that
    span's trace), e.g. each prediction of a batch in its own image's trace.
    """
    acks = []
    for event in events:
        span = span_of(event) if span_of is not None else None
        with in_span(span) if span is not None else contextlib.nullcontext():
            acks.append(await enqueue_event(broker, event))
    await asyncio.gather(*acks)


DLQ_VALUE_BYTES = 256 * 1024
"""The most of a dead-lettered value copied into its letter (base64: 4/3 of it)."""


class DeadLetterPublisher:
    """Sends what a consumer cannot process to ``<topic>.dlq`` with one reason."""

    def __init__(self, broker: KafkaBroker, service: str) -> None:
        self._broker = broker
        self._service = service

    @property
    def broker(self) -> KafkaBroker:
        return self._broker

    async def send(self, record: ConsumerRecord[Any, Any], *, reason: str, error: str) -> None:
        headers = {
            k: v.decode("utf-8", "replace") for k, v in (record.headers or ()) if v is not None
        }
        value: bytes = record.value or b""
        key: bytes | None = record.key
        # A copy must fit one produce request (1 MiB): a letter that cannot be sent leaves the
        # record uncommitted, re-read for ever, and its partition blocked for every group.
        kept = value[:DLQ_VALUE_BYTES]
        letter = DeadLetter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=key.decode("utf-8", "replace") if key is not None else None,
            reason=reason,
            error=error[:8192],
            service=self._service,
            original_headers=headers,
            original_value_b64=base64.b64encode(kept).decode(),
            site_id=_site_from_key(key),
            original_size=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
            original_value_kept=len(kept),
        )
        await self._broker.publish(
            letter.model_dump_json().encode(),
            topic=dlq_topic(record.topic),
            key=key,
            headers={"content-type": "application/json", "x-dlq-reason": reason},
        )
        DEAD_LETTERS.labels(self._service, record.topic, reason).inc()
        log.warning(
            "message_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            error=error[:500],
        )


def tolerant_record(record: ConsumerRecord[Any, Any]) -> ConsumerRecord[Any, Any]:
    """The record with headers FastStream's parser can decode (it calls ``bytes.decode()``).

    A header that is ``None`` or not UTF-8 would otherwise make the parser raise before the
    handler runs, which under ``NACK_ON_ERROR`` re-reads the same message forever.
    """
    headers = record.headers or ()
    clean: list[tuple[str, bytes]] = []
    changed = False
    for key, value in headers:
        if value is None:
            clean.append((key, b""))
            changed = True
            continue
        try:
            value.decode()
        except UnicodeDecodeError:
            value = value.decode("utf-8", "replace").encode()
            changed = True
        clean.append((key, value))
    return dataclasses.replace(record, headers=clean) if changed else record


async def _tolerant_parser(
    record: ConsumerRecord[Any, Any],
    original: Callable[[ConsumerRecord[Any, Any]], Awaitable[Any]],
) -> Any:
    return await original(tolerant_record(record))


def _site_from_key(key: bytes | None) -> str | None:
    if not key:
        return None
    return key.decode("utf-8", "replace").split("/", 1)[0] or None


def event_subscriber(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    service: str,
    transient_attempts: int = 5,
    transient_base_delay_s: float = 0.5,
    **subscriber_options: Any,
) -> Callable[[Handler[Any]], Handler[Any]]:
    """Register ``handler(event)`` for ``topic`` with validation, DLQ routing and safe commits.

    The handler receives the validated event model of the topic; it raises ``PermanentError`` for
    input it can never process and ``TransientError`` for a dependency that is down.
    """
    model = model_for_topic(topic)
    dead_letters = DeadLetterPublisher(broker, service)

    def decorator(handler: Handler[Any]) -> Handler[Any]:
        async def consume(message: KafkaMessage) -> None:
            started = time.perf_counter()
            outcome = "failed"  # unless set below: an exception escaping means re-read
            try:
                outcome = await handle(message)
            finally:
                # The canonical line of the message (its coordinates and ids are bound in the
                # log context; its trace ids come from the consumer span).
                log.info(
                    "message_handled",
                    outcome=outcome,
                    duration_ms=round((time.perf_counter() - started) * 1000.0, 2),
                )

        async def handle(message: KafkaMessage) -> str:
            record: ConsumerRecord[Any, Any] = message.raw_message
            try:
                event = model.model_validate_json(record.value or b"")
            except ValidationError as exc:
                await dead_letters.send(record, reason="schema_violation", error=str(exc))
                return "dead_lettered"
            try:
                await call_with_backoff(
                    lambda: handler(event),
                    attempts=transient_attempts,
                    base_delay_s=transient_base_delay_s,
                    log_event="handler_transient_error",
                    topic=topic,
                    offset=record.offset,
                )
            except TransientError:
                raise  # not committed: the message is re-read, never dropped
            except PermanentError as exc:
                await dead_letters.send(record, reason=exc.reason, error=str(exc))
                return "dead_lettered"
            except Exception as exc:  # a bug must not block the partition: park it with the trace
                log.exception("handler_failed", topic=topic, offset=record.offset)
                await dead_letters.send(
                    record, reason="unhandled_error", error=f"{type(exc).__name__}: {exc}"
                )
                return "dead_lettered"
            return "ok"

        consume.__name__ = f"{service}_{handler.__name__}"
        broker.subscriber(
            topic,
            group_id=group_id,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            parser=_tolerant_parser,
            **subscriber_options,
        )(consume)
        return handler

    return decorator
