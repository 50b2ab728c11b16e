"""The bus is not a side door: the production profile's broker (SASL/SCRAM + ACLs), for real.

One secured single-node Kafka (``defectloop.cli.kafka_local``, profile ``production``, sites A
and B) for this module (the ``secured_kafka`` fixture of tests/integration/conftest.py). Every refusal below is the broker's own answer (an authentication
failure, or Kafka error 29/30: topic/group authorization failed), and each allowed path is
exercised too, so a refusal cannot come from a broken client.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)

from defectloop.cli import kafka_local
from defectloop.common import events, topics
from defectloop.common.decisions import DecisionFanOut
from defectloop.common.kafka_auth import ScramCredentials, client_kwargs

from .conftest import decision, who

pytestmark = pytest.mark.integration

TIMEOUT_S = 60.0


async def produce(bootstrap: str, creds: ScramCredentials | None, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, request_timeout_ms=10_000, **client_kwargs(creds)
    )
    try:
        await producer.start()
        await producer.send_and_wait(topic, value)
    finally:
        await producer.stop()


async def consume(
    bootstrap: str, creds: ScramCredentials, topic: str, group: str, *, want: int = 0
) -> list[bytes]:
    """Read ``topic`` in consumer group ``group`` until ``want`` messages came (or one poll)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        request_timeout_ms=10_000,
        **client_kwargs(creds),
    )
    values: list[bytes] = []
    try:
        await consumer.start()
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                values += [r.value for records in batch.values() for r in records if r.value]
                if len(values) >= want:
                    return values
    finally:
        await consumer.stop()


async def test_a_client_without_valid_credentials_cannot_connect(
    secured_kafka: kafka_local.KafkaLayout,
) -> None:
    with pytest.raises(KafkaConnectionError):
        await produce(secured_kafka.bootstrap, None, topics.PREDICTION_MADE, b"{}")
    wrong = ScramCredentials("inference", "not-its-password")
    with pytest.raises(KafkaConnectionError):
        await produce(secured_kafka.bootstrap, wrong, topics.PREDICTION_MADE, b"{}")


async def test_a_service_writes_and_reads_only_its_own_topics(
    secured_kafka: kafka_local.KafkaLayout,
) -> None:
    bootstrap = secured_kafka.bootstrap
    # Allowed: inference publishes decisions, reads deployments.
    await produce(bootstrap, who(secured_kafka, "inference"), topics.PREDICTION_MADE, b"{}")
    await consume(bootstrap, who(secured_kafka, "inference"), topics.MODEL_DEPLOYED, "inference")
    # Refused: inference deploying a model (the trainer's topic) ...
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(bootstrap, who(secured_kafka, "inference"), topics.MODEL_DEPLOYED, b"{}")
    # ... ingest reading decisions, and a service using another service's consumer group.
    with pytest.raises(TopicAuthorizationFailedError):
        await consume(bootstrap, who(secured_kafka, "ingest"), topics.PREDICTION_MADE, "ingest")
    with pytest.raises(GroupAuthorizationFailedError):
        await consume(bootstrap, who(secured_kafka, "monitor"), topics.PREDICTION_MADE, "inference")


async def test_each_mes_reads_its_own_sites_decisions_and_no_other(
    secured_kafka: kafka_local.KafkaLayout,
) -> None:
    bootstrap = secured_kafka.bootstrap
    sent = [
        decision("A", f"{1:064x}", role=events.ModelRole.CHAMPION),
        decision("A", f"{2:064x}", role=events.ModelRole.SHADOW),  # not for the MES
        decision("B", f"{3:064x}", role=events.ModelRole.CHAMPION),
    ]
    for event in sent:
        await produce(
            bootstrap,
            who(secured_kafka, "inference"),
            topics.PREDICTION_MADE,
            event.model_dump_json().encode(),
        )
    router = DecisionFanOut(bootstrap, credentials=who(secured_kafka, "decisions-router"))
    await router.start()
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while router.copied < 2:
                await router.step()
    finally:
        await router.stop()

    mes_a, mes_b = who(secured_kafka, "mes-A"), who(secured_kafka, "mes-B")
    got_a = await consume(bootstrap, mes_a, topics.decisions_topic("A"), "mes-A", want=1)
    got_b = await consume(bootstrap, mes_b, topics.decisions_topic("B"), "mes-B.line-1", want=1)
    assert [events.PredictionMade.model_validate_json(v).image_id for v in got_a] == [
        sent[0].image_id
    ]
    assert [events.PredictionMade.model_validate_json(v).image_id for v in got_b] == [
        sent[2].image_id
    ]

    for creds, topic, group in (
        (mes_a, topics.decisions_topic("B"), "mes-A"),
        (mes_b, topics.decisions_topic("A"), "mes-B"),
        (mes_a, topics.PREDICTION_MADE, "mes-A"),
    ):
        with pytest.raises(TopicAuthorizationFailedError):
            await consume(bootstrap, creds, topic, group)
    # Site B's MES may not borrow a group of site A either (nor write decisions at all).
    with pytest.raises(GroupAuthorizationFailedError):
        await consume(bootstrap, mes_b, topics.decisions_topic("B"), "mes-A")
    with pytest.raises(TopicAuthorizationFailedError):
        await produce(bootstrap, mes_a, topics.decisions_topic("A"), b"{}")
