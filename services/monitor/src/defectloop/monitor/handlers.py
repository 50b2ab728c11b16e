"""Kafka adapters: the five consumed topics -> the store; the evaluator's events -> Kafka.

Each topic is consumed in batches (one SQLite transaction per batch instead of one per event:
the monitor reads every image and every prediction of every site). A batch is committed only
after it is in the database; a locked or unreachable database is a transient error (the batch is
re-read, never dropped). Events to publish are read from the store's outbox and marked after the
broker acknowledged them, so a crash in between re-publishes the same event (same ``event_id``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from faststream.kafka import KafkaBroker
from sqlalchemy.exc import OperationalError

from defectloop.common import topics, tracing
from defectloop.common.errors import TransientError
from defectloop.common.events import Event
from defectloop.common.kafka import publish_event
from defectloop.common.kafka_batch import BatchItem, Rejection, batch_event_subscriber
from defectloop.common.logging import get_logger
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

GROUP_ID = "monitor"
CONSUMED: tuple[str, ...] = (
    topics.IMAGE_CAPTURED,
    topics.IMAGE_REJECTED,
    topics.PREDICTION_MADE,
    topics.ANNOTATION_COMPLETED,
    topics.MODEL_DEPLOYED,
)

log = get_logger(__name__)

JOINED = frozenset({topics.PREDICTION_MADE, topics.ANNOTATION_COMPLETED})


def join_spans(tracer: tracing.Tracer, items: Sequence[BatchItem[Event]]) -> tracing.ItemSpans:
    """``monitor.join``: one span per prediction or annotation in its own trace."""
    return tracing.ItemSpans(
        tracer,
        "monitor.join",
        [tracing.headers_context(i.record.headers or ()) for i in items],
        [
            {
                tracing.ATTR_SITE: i.event.site_id,
                tracing.ATTR_IMAGE: str(getattr(i.event, "image_id", "")),
                tracing.ATTR_BATCH_SIZE: len(items),
            }
            for i in items
        ],
    )


async def record(store: MonitorStore, events: Sequence[Event]) -> None:
    """Record a batch off the event loop; a database that cannot write now is transient."""
    try:
        await asyncio.to_thread(store.record_many, events)
    except OperationalError as exc:
        raise TransientError(f"monitor database unavailable: {exc}") from exc


def subscribe(
    broker: KafkaBroker,
    store: MonitorStore,
    settings: MonitorSettings,
    *,
    group_id: str = GROUP_ID,
) -> None:
    """One batch subscriber per consumed topic, all in the monitor's consumer group.

    With ``settings.sites`` set, other sites' events are read and skipped (a monitor per group
    of sites).
    """
    only = frozenset(settings.sites)
    tracer = tracing.tracer_for(settings, __name__)
    for topic in CONSUMED:

        async def record_batch(items: Sequence[BatchItem[Event]]) -> list[Rejection]:
            kept = [i for i in items if not only or i.event.site_id in only]
            if kept:
                # Predictions and annotations are joined here: a span in each one's trace.
                spans = join_spans(tracer, kept) if kept[0].record.topic in JOINED else None
                try:
                    await record(store, [i.event for i in kept])
                finally:
                    if spans is not None:
                        spans.end()
            return []

        record_batch.__name__ = f"record_{topic.replace('.', '_')}"
        batch_event_subscriber(
            broker,
            topic,
            group_id=group_id,
            service=settings.service_name,
            max_records=settings.max_batch,
            batch_timeout_ms=settings.batch_wait_ms,
        )(record_batch)


async def publish_pending(broker: KafkaBroker, store: MonitorStore) -> int:
    """Publish the outbox in order; each event is marked once the broker acknowledged it."""
    pending = await asyncio.to_thread(store.pending_events)
    for event in pending:
        await publish_event(broker, event)
        await asyncio.to_thread(store.mark_published, event.event_id)
    if pending:
        log.info("events_published", count=len(pending))
    return len(pending)
