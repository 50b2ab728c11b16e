"""Reading topics without a group on the real broker: to the end, following, a compacted table."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaProducer
from faststream.kafka import KafkaBroker

from defectloop.common import topics
from defectloop.common.errors import ConfigError
from defectloop.common.events import ImageRejected, ModelDeployed, ModelRole, RejectReason
from defectloop.common.kafka import DeadLetterPublisher, publish_event
from defectloop.common.kafka_read import read_events, read_topic
from defectloop.common.kafka_table import CompactedTableFollower
from defectloop.testing.kafka import collect, started_broker
from defectloop.testing.net import wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def site() -> str:
    return "rd" + uuid.uuid4().hex[:10]


@pytest.fixture
async def broker(kafka_bootstrap: str) -> AsyncIterator[KafkaBroker]:
    async with started_broker(kafka_bootstrap, "common-read-test") as started:
        yield started


def _rejected(site: str, n: int) -> ImageRejected:
    return ImageRejected(site_id=site, camera_id="cam-1", reason=RejectReason.EMPTY, detail=str(n))


def _deployed(site: str, version: str) -> ModelDeployed:
    return ModelDeployed(
        site_id=site,
        role=ModelRole.CHAMPION,
        model_name="m",
        model_version=version,
        artifact_uri="/bundles/m",
        sha256="a" * 64,
    )


async def test_read_topic_returns_every_record_up_to_the_end_in_offset_order(
    kafka_bootstrap: str, broker: KafkaBroker, site: str
) -> None:
    for n in range(3):
        await publish_event(broker, _rejected(site, n))
    await broker.publish(b"{not json", topic=topics.IMAGE_REJECTED, key=f"{site}/cam-1".encode())
    records = await read_topic(kafka_bootstrap, topics.IMAGE_REJECTED)
    ours = [r for r in records if r.key == f"{site}/cam-1".encode()]
    assert [r.value == b"{not json" for r in ours] == [False, False, False, True]
    assert [r.offset for r in ours] == sorted(r.offset for r in ours)


async def test_read_topic_reads_only_the_partitions_asked_for(
    kafka_bootstrap: str, broker: KafkaBroker, site: str
) -> None:
    await publish_event(broker, _rejected(site, 0))
    everything = await read_topic(kafka_bootstrap, topics.IMAGE_REJECTED)
    (mine,) = [r for r in everything if r.key == f"{site}/cam-1".encode()]
    only = await read_topic(kafka_bootstrap, topics.IMAGE_REJECTED, partitions=[mine.partition])
    assert {r.partition for r in only} == {mine.partition}
    assert mine.offset in {r.offset for r in only}


async def test_read_events_parses_filters_and_skips_what_is_not_an_event(
    kafka_bootstrap: str, broker: KafkaBroker, site: str
) -> None:
    await publish_event(broker, _rejected(site, 0))
    await broker.publish(b"{not json", topic=topics.IMAGE_REJECTED, key=f"{site}/cam-1".encode())
    await publish_event(broker, _rejected(site, 1))
    events = await read_events(
        kafka_bootstrap, topics.IMAGE_REJECTED, where=lambda e: e.site_id == site
    )
    assert [e.detail for e in events] == ["0", "1"]


async def test_read_topic_refuses_a_topic_that_does_not_exist(kafka_bootstrap: str) -> None:
    with pytest.raises(ConfigError) as exc:
        await read_topic(kafka_bootstrap, f"no-such-topic-{uuid.uuid4().hex[:6]}")
    assert exc.value.reason == "config_invalid"


async def test_collector_gathers_only_what_matches_as_it_arrives(
    kafka_bootstrap: str, broker: KafkaBroker, site: str
) -> None:
    async with collect(
        kafka_bootstrap, topics.IMAGE_REJECTED, where=lambda e: e.site_id == site
    ) as found:
        await publish_event(broker, _rejected(site, 0))
        await publish_event(broker, _rejected("other" + site, 1))
        await publish_event(broker, _rejected(site, 2))
        items = await found.wait_for(lambda items: len(items) >= 2)
    assert [e.detail for e in items] == ["0", "2"]


async def test_table_follower_applies_the_backlog_before_start_returns_then_follows(
    kafka_bootstrap: str, broker: KafkaBroker, site: str
) -> None:
    key = f"{site}/champion".encode()
    await publish_event(broker, _deployed(site, "v1"))
    seen: list[str] = []
    tombstones: list[bytes | None] = []
    table = CompactedTableFollower[ModelDeployed](
        kafka_bootstrap,
        topics.MODEL_DEPLOYED,
        on_event=lambda e: seen.append(e.model_version) if e.site_id == site else None,
        on_tombstone=lambda k: tombstones.append(k) if k == key else None,
        dead_letters=DeadLetterPublisher(broker, "common-test"),
        client_id="common-test-table",
    )
    await table.start()
    try:
        assert seen == ["v1"]
        await publish_event(broker, _deployed(site, "v2"))
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topics.MODEL_DEPLOYED, value=None, key=key)
        finally:
            await producer.stop()

        async def followed() -> bool:
            return seen == ["v1", "v2"] and tombstones == [key]

        await wait_until(followed, what="v2 and the tombstone")
    finally:
        await table.stop()


async def test_table_follower_dead_letters_an_invalid_row_with_one_reason_and_goes_on(
    kafka_bootstrap: str, broker: KafkaBroker, site: str
) -> None:
    key = f"{site}/champion".encode()
    await broker.publish(b'{"site_id": 1}', topic=topics.MODEL_DEPLOYED, key=key)
    seen: list[str] = []
    table = CompactedTableFollower[ModelDeployed](
        kafka_bootstrap,
        topics.MODEL_DEPLOYED,
        on_event=lambda e: seen.append(e.model_version) if e.site_id == site else None,
        on_tombstone=lambda _: None,
        dead_letters=DeadLetterPublisher(broker, "common-test"),
        client_id="common-test-table",
    )
    async with collect(
        kafka_bootstrap,
        topics.dlq_topic(topics.MODEL_DEPLOYED),
        where=lambda letter: letter.site_id == site,
    ) as letters:
        await table.start()
        try:
            await publish_event(broker, _deployed(site, "v3"))
            await letters.wait_for(lambda items: len(items) >= 1)

            async def went_on() -> bool:
                return seen == ["v3"]

            await wait_until(went_on, what="the valid row after it")
        finally:
            await table.stop()
    assert [(d.reason, d.key, d.service) for d in letters.items] == [
        ("schema_violation", key.decode(), "common-test")
    ]
    assert table.dead_lettered >= 1
