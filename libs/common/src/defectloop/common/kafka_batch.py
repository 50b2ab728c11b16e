"""Batch consumption with the same DLQ/commit discipline as :func:`kafka.event_subscriber`.

A FastStream batch subscriber (``batch=True``) hands the handler every record ``getmany`` returned
(up to ``max_records``, across the partitions this consumer owns). Here:

- each record is validated on its own: a schema violation goes to ``<topic>.dlq`` with reason
  ``schema_violation`` and the other records of the batch are still handled;
- the handler receives the valid events (with their records) and returns the items it could not
  process, each with exactly one reason (a :class:`Rejection`): those go to the DLQ, the rest of
  the batch counts as done. **Per-item errors never fail the batch**;
- an unexpected exception from the handler for a whole batch is narrowed down: the batch is
  re-run one item at a time, and only the items that still fail alone are dead-lettered
  (``unhandled_error``). Outputs the handler already published for the other items are published
  again with the same deterministic ids (at-least-once; consumers dedupe on them);
- a :class:`TransientError` is retried in place with backoff; if it persists it is raised, and
  FastStream's ``NACK_ON_ERROR`` seeks every partition of the batch back to its earliest record:
  the whole batch is re-read, nothing is skipped;
- the commit happens only after the handler returned (its outputs acknowledged by Kafka) and the
  dead letters were acknowledged: ``KafkaAckableMessage.ack()`` commits the consumer's consumed
  positions, i.e. exactly past the last record of this batch. A crash (``kill -9``) anywhere
  before that commit re-delivers the whole batch to whoever owns the partitions next;
- the commit happens inside a gate that the rebalance listener (:class:`DrainOnRevoke`) waits on,
  so a graceful rebalance lets the batch in flight finish and commit before its partitions move;
  records fetched before a revocation are left to the new owner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from faststream import AckPolicy
from faststream.kafka import KafkaBroker, KafkaMessage
from pydantic import ValidationError

from defectloop.common.errors import DefectloopError, TransientError
from defectloop.common.events import Event, model_for_topic
from defectloop.common.kafka import DeadLetterPublisher, tolerant_record
from defectloop.common.logging import get_logger
from defectloop.common.retry import call_with_backoff

EventT = TypeVar("EventT", bound=Event)

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BatchItem(Generic[EventT]):
    """One valid event of a batch and the record it came from."""

    record: ConsumerRecord[Any, Any]
    event: EventT


@dataclass(frozen=True, slots=True)
class Rejection:
    """An item the handler could not process, with exactly one machine-readable reason."""

    record: ConsumerRecord[Any, Any]
    reason: str
    error: str

    @classmethod
    def of(cls, record: ConsumerRecord[Any, Any], exc: DefectloopError) -> Rejection:
        return cls(record=record, reason=exc.reason, error=str(exc))


BatchHandler = Callable[[Sequence[BatchItem[Any]]], Awaitable[Sequence[Rejection]]]


async def _tolerant_batch_parser(
    records: tuple[ConsumerRecord[Any, Any], ...],
    original: Callable[[tuple[ConsumerRecord[Any, Any], ...]], Awaitable[Any]],
) -> Any:
    return await original(tuple(tolerant_record(r) for r in records))


def _owned(
    message: KafkaMessage, records: Sequence[ConsumerRecord[Any, Any]]
) -> list[ConsumerRecord[Any, Any]]:
    assignment = getattr(getattr(message, "consumer", None), "assignment", None)
    if assignment is None:  # in-memory test broker: no assignment to check
        return list(records)
    owned: set[TopicPartition] = assignment()
    return [r for r in records if TopicPartition(r.topic, r.partition) in owned]


async def _with_retries(
    handler: BatchHandler,
    items: Sequence[BatchItem[Any]],
    *,
    attempts: int,
    base_delay_s: float,
) -> Sequence[Rejection]:
    return await call_with_backoff(
        lambda: handler(items),
        attempts=attempts,
        base_delay_s=base_delay_s,
        log_event="batch_transient_error",
        size=len(items),
    )


async def _narrow_down(
    handler: BatchHandler,
    items: Sequence[BatchItem[Any]],
    *,
    topic: str,
    attempts: int,
    base_delay_s: float,
) -> list[Rejection]:
    """Re-run a failed batch one item at a time; only the items that fail alone are rejected."""
    rejections: list[Rejection] = []
    for item in items:
        try:
            rejections.extend(
                await _with_retries(handler, [item], attempts=attempts, base_delay_s=base_delay_s)
            )
        except TransientError:
            raise
        except DefectloopError as exc:
            rejections.append(Rejection.of(item.record, exc))
        except Exception as exc:
            log.exception("handler_failed", topic=topic, offset=item.record.offset)
            rejections.append(
                Rejection(item.record, "unhandled_error", f"{type(exc).__name__}: {exc}")
            )
    return rejections


async def process_batch(
    records: Sequence[ConsumerRecord[Any, Any]],
    handler: BatchHandler,
    *,
    model: type[Event],
    dead_letters: DeadLetterPublisher,
    transient_attempts: int = 5,
    transient_base_delay_s: float = 0.5,
) -> None:
    """Validate, handle and dead-letter one batch; returns when everything was acknowledged.

    Raises (so the batch is re-read, never committed) only on a persistent ``TransientError`` or
    when a dead letter cannot be published.
    """
    items: list[BatchItem[Any]] = []
    rejections: list[Rejection] = []
    for record in records:
        try:
            items.append(BatchItem(record, model.model_validate_json(record.value or b"")))
        except ValidationError as exc:
            rejections.append(Rejection(record, "schema_violation", str(exc)))
    topic = records[0].topic if records else ""
    if items:
        try:
            rejections.extend(
                await _with_retries(
                    handler,
                    items,
                    attempts=transient_attempts,
                    base_delay_s=transient_base_delay_s,
                )
            )
        except TransientError:
            raise  # not committed: NACK_ON_ERROR seeks back, the batch is re-read
        except Exception as exc:
            if len(items) == 1:
                if isinstance(exc, DefectloopError):
                    rejections.append(Rejection.of(items[0].record, exc))
                else:
                    log.exception("handler_failed", topic=topic, offset=items[0].record.offset)
                    rejections.append(
                        Rejection(
                            items[0].record, "unhandled_error", f"{type(exc).__name__}: {exc}"
                        )
                    )
            else:
                log.warning(
                    "batch_failed_narrowing_down", topic=topic, size=len(items), error=str(exc)
                )
                rejections.extend(
                    await _narrow_down(
                        handler,
                        items,
                        topic=topic,
                        attempts=transient_attempts,
                        base_delay_s=transient_base_delay_s,
                    )
                )
    if rejections:
        await asyncio.gather(
            *(dead_letters.send(r.record, reason=r.reason, error=r.error) for r in rejections)
        )


class DrainOnRevoke(ConsumerRebalanceListener):  # type: ignore[misc]
    """Makes a rebalance wait for the batch in flight to finish and commit.

    aiokafka keeps the member alive during ``on_partitions_revoked`` precisely so offsets can be
    committed there: holding the revocation until the current batch is committed means a graceful
    rebalance (a second instance joining, one leaving) re-delivers nothing. ``inner`` (e.g. an
    assignment tracker) is called after.
    """

    def __init__(self, inner: ConsumerRebalanceListener | None = None) -> None:
        self.inner = inner
        self.lock = asyncio.Lock()

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self.lock:
            pass
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_revoked(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if self.inner is not None:
            await _maybe_await(self.inner.on_partitions_assigned(assigned))


async def _maybe_await(result: Any) -> None:
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result


def batch_event_subscriber(
    broker: KafkaBroker,
    topic: str,
    *,
    group_id: str,
    service: str,
    max_records: int,
    batch_timeout_ms: int,
    transient_attempts: int = 5,
    transient_base_delay_s: float = 0.5,
    **subscriber_options: Any,
) -> Callable[[BatchHandler], BatchHandler]:
    """Register ``handler(items) -> rejections`` for ``topic`` as a batch consumer.

    ``max_records`` bounds a batch; ``batch_timeout_ms`` is how long ``getmany`` waits for a
    first record when none is buffered (it never waits to *fill* a batch: under load batches
    fill up by themselves, at low load they stay small and latency stays low).
    """
    model = model_for_topic(topic)
    dead_letters = DeadLetterPublisher(broker, service)
    gate = DrainOnRevoke(subscriber_options.pop("listener", None))

    def decorator(handler: BatchHandler) -> BatchHandler:
        async def consume(message: KafkaMessage) -> None:
            raw = message.raw_message
            records = raw if isinstance(raw, tuple) else (raw,)
            async with gate.lock:
                # Records fetched before a rebalance took their partitions away belong to the
                # new owner now: leave them to it (they are not committed here).
                owned = _owned(message, records)
                started = time.perf_counter()
                if owned:
                    await process_batch(
                        owned,
                        handler,
                        model=model,
                        dead_letters=dead_letters,
                        transient_attempts=transient_attempts,
                        transient_base_delay_s=transient_base_delay_s,
                    )
                # Commit inside the gate, so a revocation waits for it (the ack middleware
                # sees the message as committed and does not commit again).
                await message.ack()
                # The batch's canonical line (a batch is the unit handled and committed here).
                log.info(
                    "batch_handled",
                    owned=len(owned),
                    duration_ms=round((time.perf_counter() - started) * 1000.0, 2),
                )

        consume.__name__ = f"{service}_{getattr(handler, '__name__', 'batch')}"
        broker.subscriber(
            topic,
            group_id=group_id,
            batch=True,
            max_records=max_records,
            batch_timeout_ms=batch_timeout_ms,
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.NACK_ON_ERROR,
            parser=_tolerant_batch_parser,
            listener=gate,
            **subscriber_options,
        )(consume)
        return handler

    return decorator
