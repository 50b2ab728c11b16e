"""Poison events on every consumed topic (issue 12 §4): each service, real broker, its own app.

For each service and each topic its consumer group reads, a foreign producer (plain aiokafka, as
a buggy or hostile client would be) publishes, on the key of the valid traffic: bytes that are not
JSON, JSON of another schema, the topic's event with a schema version no consumer knows, a ~900 KB
event, and a valid event of a site nobody serves; then a valid event. Checked, per record, on the
real topics: every poison is on ``<topic>.dlq`` exactly once with its own reason (and the error
naming what was wrong), the valid event is not, and the group's committed offset moved past every
record published (so a restarted instance re-reads none of them: nothing is re-delivered, the
partition kept flowing). Inference also shows the valid image predicted after its poison.

``model.deployed`` as inference reads it (a compacted table, no consumer group): poison rows on a
site's champion key are dead-lettered by inference, a deployment of a bundle that does not exist
is refused, and the champion that served before keeps predicting (the follower itself is covered
by ``libs/common/tests``; the monitor reads the topic in a group, in the cases above).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI

from defectloop.common import topics
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    DeadLetter,
    DegradationKind,
    Event,
    ImageCaptured,
    ImageRejected,
    LabelsRequested,
    MetricDegraded,
    ModelDeployed,
    ModelRole,
    QualityMetrics,
    RejectReason,
    image_id_for,
)
from defectloop.testing.kafka import collect
from defectloop.testing.net import wait_until

from .conftest import Pipeline, decision, frame

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HUGE_BYTES = 900_000
"""Under the broker's default 1 MiB record limit (a larger one never reaches a consumer)."""

SHA = "ab" * 32

# What each poison must be dead-lettered with: its reason and a fragment of the error text that
# shows the consumer saw *that* problem (the reason alone is shared by every schema problem).
EXPECTED: dict[str, tuple[str, str]] = {
    "not_json": ("schema_violation", "json"),
    "wrong_schema": ("schema_violation", "field required"),
    "unknown_version": ("schema_violation", "schema_version"),
    "huge": ("schema_violation", "extra inputs are not permitted"),
}


def valid_event(topic: str, site: str) -> Event:
    """A schema-valid event of ``topic`` for ``site`` (camera ``cam-1``)."""
    now = datetime.now(UTC)
    image_id = image_id_for(site, "cam-1", SHA)
    camera = {"site_id": site, "camera_id": "cam-1"}
    if topic == topics.IMAGE_CAPTURED:
        return ImageCaptured(
            **camera,
            image_id=image_id,
            sha256=SHA,
            blob_uri="file:///nowhere/ab.png",
            captured_at=now,
            width=64,
            height=64,
            quality=QualityMetrics(sharpness=50.0, brightness=120.0, contrast=30.0, uniform=False),
        )
    if topic == topics.IMAGE_REJECTED:
        return ImageRejected(
            **camera, sha256=SHA, reason=RejectReason.TOO_DARK, detail="mean brightness 3"
        )
    if topic == topics.PREDICTION_MADE:
        return decision(
            site, SHA, model_name="poison-test", blob_uri="file:///nowhere/ab.png", captured_at=now
        )
    if topic == topics.ANNOTATION_COMPLETED:
        return AnnotationCompleted(
            **camera,
            image_id=image_id,
            annotation_id=f"ann-{uuid.uuid4().hex[:8]}",
            annotator="alice",
            status=AnnotationStatus.COMPLETED,
            lead_time_s=3.0,
        )
    if topic == topics.MODEL_DEPLOYED:
        return ModelDeployed(
            site_id=site,
            role=ModelRole.CHAMPION,
            model_name="poison-test",
            model_version="v1",
            artifact_uri="file:///nowhere/bundle",
            sha256=SHA,
        )
    if topic == topics.METRIC_DEGRADED:
        return MetricDegraded(
            site_id=site,
            kind=DegradationKind.PREDICTION_DRIFT,
            metric="psi",
            value=0.4,
            baseline=0.0,
            threshold=0.2,
            window_start=now - timedelta(minutes=5),
            window_end=now,
            sample_size=100,
            incident_id=f"inc-{uuid.uuid4().hex[:8]}",
        )
    if topic == topics.LABELS_REQUESTED:
        return LabelsRequested(
            site_id=site,
            request_id=f"req-{uuid.uuid4().hex[:8]}",
            reason="incident",
            random_share=0.2,
            target_labels=10,
            expires_at=now + timedelta(hours=1),
        )
    raise AssertionError(f"no valid event for {topic}")


def poisons(topic: str, site: str) -> dict[str, bytes]:
    """The poison records of ``topic``, by kind (a valid event of an unknown site is added by the
    caller: what it must do depends on the service)."""
    body = json.loads(valid_event(topic, site).model_dump_json())
    return {
        "not_json": b"\x00\xff{not json at all",
        "wrong_schema": json.dumps({"hello": "world", "site_id": site}).encode(),
        "unknown_version": json.dumps({**body, "schema_version": 99}).encode(),
    }


def huge_poison(topic: str, site: str) -> bytes:
    """The topic's event with ~900 KB of padding: a record Kafka accepts, no consumer should."""
    body = json.loads(valid_event(topic, site).model_dump_json())
    return json.dumps({**body, "padding": "x" * HUGE_BYTES}).encode()


@dataclass(frozen=True)
class Case:
    """A service, the topics its consumer group reads, and what it does with a valid event of a
    site it does not serve: dead-letter it with that reason, or ``None`` (it is the service's
    normal input: recorded or skipped, committed, not dead-lettered)."""

    service: str
    topics: tuple[str, ...]
    unknown_site_reason: str | None


CASES = [
    Case("inference", (topics.IMAGE_CAPTURED,), "no_model"),
    Case("annotation_sync", (topics.PREDICTION_MADE, topics.LABELS_REQUESTED), None),
    Case(
        "monitor",
        (
            topics.IMAGE_CAPTURED,
            topics.IMAGE_REJECTED,
            topics.PREDICTION_MADE,
            topics.ANNOTATION_COMPLETED,
            topics.MODEL_DEPLOYED,
        ),
        None,
    ),
    Case(
        "trainer",
        (topics.METRIC_DEGRADED, topics.IMAGE_CAPTURED, topics.ANNOTATION_COMPLETED),
        None,
    ),
]


@asynccontextmanager
async def running(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


def service_app(service: str, bootstrap: str, tmp_path: Path, group: str) -> FastAPI:
    """The service's own app on the real broker, in a consumer group of this test's."""
    import importlib

    from .conftest import SERVICE_SETTINGS

    main = importlib.import_module(f"defectloop.{service}.main")
    module = importlib.import_module(f"defectloop.{service}.settings")
    settings = getattr(module, SERVICE_SETTINGS[service])(
        kafka_bootstrap=bootstrap,
        database_url=f"sqlite:///{tmp_path}/{service}.db",
        blob_url=(tmp_path / "blobs").as_uri(),
    )
    app: FastAPI = main.build_app(settings, group_id=group)
    return app


@dataclass(frozen=True)
class Sent:
    kind: str
    topic: str
    partition: int
    offset: int


async def publish_raw(
    producer: AIOKafkaProducer, topic: str, key: bytes, kind: str, value: bytes
) -> Sent:
    meta = await producer.send_and_wait(topic, value, key=key)
    return Sent(kind, topic, meta.partition, meta.offset)


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def end_offsets(bootstrap: str, tps: set[TopicPartition]) -> dict[TopicPartition, int]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends: dict[TopicPartition, int] = await consumer.end_offsets(list(tps))
    finally:
        await consumer.stop()
    return ends


async def poison_then_valid(
    producer: AIOKafkaProducer, topic: str, site: str, *, unknown_site: bool = True
) -> list[Sent]:
    """Every poison of ``topic`` (the huge one has its own test) and a valid event of a site
    nobody serves; the caller sends the valid event after them."""
    valid = valid_event(topic, site)
    key = valid.key()
    sent = [
        await publish_raw(producer, topic, key, kind, value)
        for kind, value in poisons(topic, site).items()
    ]
    if unknown_site:
        stranger = valid_event(topic, "unknown" + uuid.uuid4().hex[:8])
        # On the valid traffic's key: same partition, so it is read before the valid event.
        sent.append(
            await publish_raw(
                producer, topic, key, "unknown_site", stranger.model_dump_json().encode()
            )
        )
    return sent


async def check(
    bootstrap: str,
    group: str,
    case: Case,
    sent: list[Sent],
    run: Callable[[], AbstractAsyncContextManager[Any]],
    *,
    timeout_s: float = 120.0,
) -> None:
    """Run the service until its group committed past every record sent; check the DLQs."""
    coords = {(s.topic, s.partition, s.offset): s for s in sent}
    dlqs = sorted({topics.dlq_topic(s.topic) for s in sent})

    def ours(letter: DeadLetter) -> bool:
        return (letter.source_topic, letter.partition, letter.offset) in coords

    tps = {TopicPartition(s.topic, s.partition) for s in sent}
    async with collect(bootstrap, dlqs, where=ours, model=DeadLetter) as letters, run():
        # Every record of ours (and any other before it) published: the ends to commit past.
        ends = await end_offsets(bootstrap, tps)

        async def all_committed() -> bool:
            done = await committed(bootstrap, group)
            return all(done.get(tp, -1) >= ends[tp] for tp in tps)

        await wait_until(
            all_committed, timeout_s=timeout_s, what=f"{case.service} committing past the poison"
        )
        # Dead letters are acknowledged before the commit; the collector may still be reading.
        expected = [s for s in sent if reason_of(case, s) is not None]
        await letters.wait_for(lambda found: len(found) >= len(expected), timeout_s=30)
        found: list[DeadLetter] = list(letters.items)

    by_coord: dict[tuple[str, int | None, int | None], list[DeadLetter]] = {}
    for letter in found:
        by_coord.setdefault((letter.source_topic, letter.partition, letter.offset), []).append(
            letter
        )
    for s in sent:
        got = by_coord.get((s.topic, s.partition, s.offset), [])
        reason = reason_of(case, s)
        if reason is None:
            assert got == [], f"{case.service} dead-lettered {s.kind} on {s.topic}: {got}"
            continue
        assert len(got) == 1, f"{s.kind} on {s.topic}: {len(got)} dead letters"
        assert got[0].reason == reason, f"{s.kind} on {s.topic}: {got[0].reason} ({got[0].error})"
        fragment = EXPECTED[s.kind][1] if s.kind in EXPECTED else ""
        assert fragment in got[0].error.lower(), f"{s.kind} on {s.topic}: {got[0].error[:300]}"
        assert got[0].service.replace("-", "_").startswith(case.service)


def reason_of(case: Case, sent: Sent) -> str | None:
    if sent.kind == "valid":
        return None
    if sent.kind == "unknown_site":
        return case.unknown_site_reason
    return EXPECTED[sent.kind][0]


@asynccontextmanager
async def own_producer(bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    """A foreign producer: no event model, no headers, what a buggy client would send."""
    client = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", max_request_size=2 * 1024 * 1024
    )
    await client.start()
    try:
        yield client
    finally:
        await client.stop()


@pytest.fixture
async def producer(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaProducer]:
    async with own_producer(kafka_bootstrap) as client:
        yield client


@pytest.mark.parametrize(
    "case", [c for c in CASES if c.service != "inference"], ids=lambda c: c.service
)
async def test_poison_is_dead_lettered_and_the_partition_keeps_flowing(
    case: Case,
    kafka_bootstrap: str,
    tmp_path: Path,
    unique_group: str,
    producer: AIOKafkaProducer,
) -> None:
    site = "poison" + uuid.uuid4().hex[:8]
    sent: list[Sent] = []
    for topic in case.topics:
        sent += await poison_then_valid(producer, topic, site)
        valid = valid_event(topic, site)
        sent.append(
            await publish_raw(
                producer, topic, valid.key(), "valid", valid.model_dump_json().encode()
            )
        )
    app = service_app(case.service, kafka_bootstrap, tmp_path, unique_group)
    await check(kafka_bootstrap, unique_group, case, sent, lambda: running(app))


async def test_inference_dead_letters_poison_and_predicts_the_image_after_it(
    pipeline: Callable[..., AbstractAsyncContextManager[Pipeline]],
    kafka_bootstrap: str,
    unique_group: str,
    producer: AIOKafkaProducer,
) -> None:
    case = CASES[0]
    async with pipeline() as p, httpx.AsyncClient() as client:
        sent = await poison_then_valid(producer, topics.IMAGE_CAPTURED, p.site)
        async with collect(
            kafka_bootstrap, topics.PREDICTION_MADE, where=lambda e: e.site_id == p.site
        ) as predictions:
            response = await p.post(client, frame(1))  # the valid image, through ingest
            assert response.status_code == 202, response.text
            image_id = response.json()["image_id"]
            await predictions.wait_for(
                lambda found: any(e.image_id == image_id for e in found), timeout_s=90
            )

        @asynccontextmanager
        async def already_running() -> AsyncIterator[None]:
            yield None

        await check(kafka_bootstrap, unique_group, case, sent, already_running)


async def test_a_huge_poison_is_dead_lettered_and_the_partition_keeps_flowing(
    tmp_path: Path, unique_group: str
) -> None:
    # On a broker of its own: were the letter too large to send again, the huge record would
    # block its partition for every consumer group reading the topic from the beginning.
    from defectloop.cli import kafka_local
    from defectloop.testing.net import free_port

    layout = kafka_local.KafkaLayout(
        tmp_path / "kafka", port=free_port(), controller_port=free_port()
    )
    # In a thread: start() creates the topics with asyncio.run (no nested event loops).
    await asyncio.to_thread(kafka_local.start, layout, partitions=1)
    try:
        async with own_producer(layout.bootstrap) as producer:
            await huge_poison_then_valid(layout.bootstrap, tmp_path, unique_group, producer)
    finally:
        await asyncio.to_thread(kafka_local.stop, layout)


async def huge_poison_then_valid(
    bootstrap: str, tmp_path: Path, group: str, producer: AIOKafkaProducer
) -> None:
    case = CASES[1]  # annotation-sync's labels.requested: the per-event subscriber
    site = "poison" + uuid.uuid4().hex[:8]
    topic = topics.LABELS_REQUESTED
    valid = valid_event(topic, site)
    sent = [
        await publish_raw(producer, topic, valid.key(), "huge", huge_poison(topic, site)),
        await publish_raw(producer, topic, valid.key(), "valid", valid.model_dump_json().encode()),
    ]
    app = service_app(case.service, bootstrap, tmp_path, group)
    await check(bootstrap, group, case, sent, lambda: running(app), timeout_s=30)


async def test_inference_keeps_its_champion_through_poison_deployments(
    pipeline: Callable[..., AbstractAsyncContextManager[Pipeline]],
    kafka_bootstrap: str,
    producer: AIOKafkaProducer,
) -> None:
    topic = topics.MODEL_DEPLOYED
    async with pipeline() as p, httpx.AsyncClient() as client:
        key = f"{p.site}/{ModelRole.CHAMPION.value}".encode()  # the row of the serving champion
        sent = [
            await publish_raw(producer, topic, key, kind, value)
            for kind, value in poisons(topic, p.site).items()
        ]
        # Schema-valid, but its bundle does not exist: refused by the router, not dead-lettered.
        missing = valid_event(topic, p.site).model_copy(update={"model_version": "v-missing"})
        sent.append(
            await publish_raw(
                producer, topic, key, "missing_bundle", missing.model_dump_json().encode()
            )
        )
        coords = {(s.topic, s.partition, s.offset): s for s in sent}

        def ours(letter: DeadLetter) -> bool:
            return (letter.source_topic, letter.partition, letter.offset) in coords

        async def refused() -> bool:
            body = (await client.get(f"{p.inference_url}/v1/models")).json()
            for row in body["models"]:
                if row["site_id"] == p.site and row["role"] == ModelRole.CHAMPION.value:
                    rejected = row["last_rejected"] or {}
                    serving = row["serving"] or {}
                    return bool(
                        rejected.get("model_version") == "v-missing"
                        and serving.get("model_version") == p.model_version
                    )
            return False

        async with (
            collect(kafka_bootstrap, topics.dlq_topic(topic), where=ours, model=DeadLetter) as dlq,
            collect(
                kafka_bootstrap, topics.PREDICTION_MADE, where=lambda e: e.site_id == p.site
            ) as predictions,
        ):
            await wait_until(refused, timeout_s=60, what="inference refusing the missing bundle")
            response = await p.post(client, frame(2))
            assert response.status_code == 202, response.text
            image_id = response.json()["image_id"]
            found = await predictions.wait_for(
                lambda got: any(e.image_id == image_id for e in got), timeout_s=90
            )
            await dlq.wait_for(lambda got: len(got) >= 3, timeout_s=30)
            letters: list[DeadLetter] = list(dlq.items)

    served = {e.model_version for e in found if e.image_id == image_id}
    assert served == {p.model_version}, served
    for s in sent:
        got = [d for d in letters if (d.partition, d.offset) == (s.partition, s.offset)]
        if s.kind == "missing_bundle":
            assert got == [], f"the missing bundle's deployment was dead-lettered: {got}"
            continue
        assert len(got) == 1, f"{s.kind}: {len(got)} dead letters"
        reason, fragment = EXPECTED[s.kind]
        assert got[0].reason == reason, got[0]
        assert fragment in got[0].error.lower(), got[0]
        assert got[0].service == "inference"
