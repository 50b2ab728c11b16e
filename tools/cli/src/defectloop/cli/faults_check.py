"""The fault run's independent checker: its own Kafka client, the topics as they ended up.

Judged (Jepsen-style: lost / duplicated / unexpected), for the run's site:

- **lost**: an image ingest acknowledged (202) with no champion ``prediction.made``;
- **duplicates after dedupe**: an image with more than one champion ``decision_id`` (what an MES
  that dedupes as documented would act on twice); **raw redeliveries**: champion records beyond
  one per image (at-least-once delivery: expected after a ``kill -9``, harmless after dedupe);
- **unexpected**: a champion prediction of an image ingest never acknowledged;
- **DLQ**: ``image.captured.dlq`` and ``prediction.made.dlq`` hold only the injected poison;
- **lag**: inference's consumer group committed up to the end of ``image.captured``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from defectloop.common import topics
from defectloop.common.events import DeadLetter, ModelRole, PredictionMade
from defectloop.common.kafka_read import read_events

INFERENCE_GROUP = "inference"


class OfferLike(Protocol):
    status: int | None
    image_id: str | None
    acked_at_s: float | None


class FaultLike(Protocol):
    at_s: float
    lost: int
    duplicates: int


async def _lag(bootstrap: str, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        done = await admin.list_consumer_group_offsets(group)
    finally:
        await consumer.stop()
        await admin.close()
    committed = {tp: meta.offset for tp, meta in done.items()}
    return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())


async def _settled_lag(bootstrap: str, settle_s: float) -> int:
    """Inference's lag on ``image.captured``, once 0 or after ``settle_s`` (the watchdog)."""
    deadline = time.monotonic() + settle_s
    while True:
        lag = await _lag(bootstrap, topics.IMAGE_CAPTURED, INFERENCE_GROUP)
        if lag == 0 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(1.0)  # polling the committed offsets


async def _read(bootstrap: str, site: str) -> tuple[list[PredictionMade], list[DeadLetter]]:
    predictions = await read_events(
        bootstrap,
        topics.PREDICTION_MADE,
        model=PredictionMade,
        where=lambda p: p.site_id == site,
        client_id="faults-checker",
    )
    letters: list[DeadLetter] = []
    for topic in (topics.IMAGE_CAPTURED, topics.PREDICTION_MADE):
        letters += await read_events(
            bootstrap, topics.dlq_topic(topic), model=DeadLetter, client_id="faults-checker"
        )
    return predictions, letters


def judge(
    offers: Sequence[OfferLike],
    predictions: list[PredictionMade],
    letters: list[DeadLetter],
    *,
    poison_key: str,
    faults: Sequence[FaultLike],
    lag: int,
) -> dict[str, Any]:
    """The verdict from what the gateways were told and what the topics hold."""
    acked = {o.image_id: o for o in offers if o.status == 202 and o.image_id}
    decisions: dict[str, set[str]] = defaultdict(set)
    records: Counter[str] = Counter()
    for p in predictions:
        if p.role == ModelRole.CHAMPION:
            decisions[p.image_id].add(p.decision_id)
            records[p.image_id] += 1
    lost = sorted(set(acked) - set(decisions))
    doubled = sorted(i for i, ids in decisions.items() if len(ids) > 1)
    unexpected = sorted(set(decisions) - set(acked))
    poison = [d for d in letters if d.key == poison_key]
    other_letters = [d for d in letters if d.key != poison_key]
    windows = [f.at_s for f in faults] + [float("inf")]
    for index, fault in enumerate(faults):
        in_window = [
            i
            for i, o in acked.items()
            if o.acked_at_s is not None and windows[index] <= o.acked_at_s < windows[index + 1]
        ]
        fault.lost = sum(1 for i in in_window if i in set(lost))
        fault.duplicates = sum(1 for i in in_window if i in set(doubled))
    dlq_other = dict(Counter(f"{d.source_topic}:{d.reason}" for d in other_letters))
    summary: dict[str, Any] = {
        "offered": len(offers),
        "acknowledged": len(acked),
        "rejected": sum(1 for o in offers if o.status is not None and o.status != 202),
        "unanswered": sum(1 for o in offers if o.status is None),
        "lost": len(lost),
        "duplicates_after_dedupe": len(doubled),
        "raw_redeliveries": sum(records.values()) - len(records),
        "unexpected": len(unexpected),
        "dlq": {"poison": len(poison), "other": dlq_other},
        "lag_after": lag,
    }
    failures = []
    if lost:
        failures.append(f"{len(lost)} acknowledged images without a decision (e.g. {lost[0]})")
    if doubled:
        failures.append(f"{len(doubled)} images with two champion decisions")
    if unexpected:
        failures.append(f"{len(unexpected)} decisions for images never acknowledged")
    if summary["unanswered"]:
        failures.append(f"{summary['unanswered']} images never answered by ingest")
    if not poison:
        failures.append("the injected poison is not on the DLQ")
    if other_letters:
        failures.append(f"{len(other_letters)} dead letters besides the injected poison")
    if lag:
        failures.append(f"inference lag still {lag}")
    return {"summary": summary, "failures": failures, "passed": not failures}


def check(
    bootstrap: str,
    *,
    site: str,
    offers: list[Any],
    faults: list[Any],
    poison_key: str,
    settle_s: float,
) -> dict[str, Any]:
    """Wait for inference to catch up (at most ``settle_s``), read the topics, judge."""

    async def run() -> tuple[int, list[PredictionMade], list[DeadLetter]]:
        lag = await _settled_lag(bootstrap, settle_s)
        predictions, letters = await _read(bootstrap, site)
        return lag, predictions, letters

    lag, predictions, letters = asyncio.run(run())
    failed = [f for f in faults if getattr(f, "error", None)]
    verdict = judge(offers, predictions, letters, poison_key=poison_key, faults=faults, lag=lag)
    for f in failed:
        verdict["failures"].append(f"fault {f.fault} did not recover: {f.error}")
        verdict["passed"] = False
    return verdict
