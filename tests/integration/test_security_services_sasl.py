"""The services themselves on the secured bus: each logs in as its own principal, through the ACLs.

Real parts: one production-profile Kafka (SASL/SCRAM only, ACLs per principal, sites A and B;
the ``secured_kafka`` fixture), the ingest and inference apps served over HTTP in this process, a
tiny signed ONNX bundle, a real simulated camera frame, and the decision router's app. Every
client below logs in as the principal that does this job in the stack: the trainer deploys, ingest
publishes ``image.captured``, inference reads it and the deployments table and publishes
``prediction.made``, the monitor's principal watches, the router copies, each MES reads its own.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from defectloop.cli import kafka_local, stack, supervisor
from defectloop.cli.decisions_router import DecisionsRouterSettings
from defectloop.cli.decisions_router import build_app as build_router
from defectloop.common import topics
from defectloop.common.errors import ConfigError
from defectloop.common.events import ModelRole, PredictionMade
from defectloop.common.kafka import publish_event
from defectloop.common.kafka_auth import ScramCredentials
from defectloop.inference.main import build_app as build_inference
from defectloop.inference.settings import InferenceSettings
from defectloop.ingest.auth import issue_token
from defectloop.ingest.main import build_app as build_ingest
from defectloop.ingest.records import open_database
from defectloop.ingest.settings import IngestSettings
from defectloop.testing.bundles import BundleBuilder
from defectloop.testing.http import serve
from defectloop.testing.kafka import collect, started_broker
from defectloop.testing.net import free_port, wait_until

from .conftest import SERVICE_SETTINGS, build_service, decision, frame, who

pytestmark = pytest.mark.integration

TIMEOUT_S = 90.0


def login(creds: ScramCredentials) -> dict[str, Any]:
    """A service's settings for logging in as ``creds``."""
    return {"kafka_username": creds.username, "kafka_password": creds.password}


def sha_of(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[FastAPI]:
    async with app.router.lifespan_context(app):
        yield app


async def test_ingest_and_inference_serve_a_frame_through_the_acls_as_their_own_principals(
    secured_kafka: kafka_local.KafkaLayout, tmp_path: Path
) -> None:
    bootstrap = secured_kafka.bootstrap
    site = "A"  # a site of the secured broker: the router test below reads its decisions too
    ingest_db = f"sqlite:///{tmp_path}/ingest.db"
    token = issue_token(open_database(ingest_db), site, "cam-1").token
    bundle = BundleBuilder(tmp_path)("v1")
    async with started_broker(
        bootstrap, "sasl-trainer", credentials=who(secured_kafka, "trainer")
    ) as trainer:
        await publish_event(trainer, bundle.deployed(site))

    common: dict[str, Any] = {
        "kafka_bootstrap": bootstrap,
        "blob_url": (tmp_path / "blobs").as_uri(),
    }
    ingest = build_ingest(
        IngestSettings(database_url=ingest_db, **common, **login(who(secured_kafka, "ingest")))
    )
    inference = build_inference(
        InferenceSettings(
            # The ACLs allow the group "inference" and "inference.<anything>".
            group_id=f"inference.{uuid.uuid4().hex[:8]}",
            providers="cpu",
            database_url=f"sqlite:///{tmp_path}/inference.db",
            max_wait_ms=50,
            **common,
            **login(who(secured_kafka, "inference")),
        )
    )
    async with AsyncExitStack() as stack:
        predictions = await stack.enter_async_context(
            collect(
                bootstrap,
                topics.PREDICTION_MADE,
                where=lambda p: p.site_id == site,
                credentials=who(secured_kafka, "monitor"),  # a reader of prediction.made
            )
        )
        inference_url = await stack.enter_async_context(serve(inference))
        ingest_url = await stack.enter_async_context(serve(ingest))
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=30))

        async def healthy() -> bool:
            answers = [await client.get(f"{u}/health") for u in (ingest_url, inference_url)]
            return all(a.status_code == 200 for a in answers)

        await wait_until(healthy, timeout_s=TIMEOUT_S, what="ingest and inference logged in")
        await asyncio.wait_for(inference.state.router.ready.wait(), TIMEOUT_S)
        posted = await client.post(
            f"{ingest_url}/v1/sites/{site}/cameras/cam-1/images",
            content=frame(1),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
        assert posted.status_code == 202, posted.text
        image_id = posted.json()["image_id"]
        found = await predictions.wait_for(
            lambda items: any(p.image_id == image_id for p in items), timeout_s=TIMEOUT_S
        )
    decided = [p for p in found if p.image_id == image_id]
    assert [(p.model_version, p.role) for p in decided] == [("v1", ModelRole.CHAMPION)]


async def test_a_service_with_a_wrong_password_fails_its_start_with_the_reason(
    secured_kafka: kafka_local.KafkaLayout, tmp_path: Path
) -> None:
    settings = InferenceSettings(
        kafka_bootstrap=secured_kafka.bootstrap,
        kafka_username="inference",
        kafka_password="not-its-password",
        group_id="inference",
        providers="cpu",
        database_url=f"sqlite:///{tmp_path}/inference.db",
        blob_url=(tmp_path / "blobs").as_uri(),
    )
    assert "not-its-password" not in repr(settings)  # SecretStr: never in a log or a failure
    with pytest.raises(ConfigError) as refused:
        async with asyncio.timeout(TIMEOUT_S), lifespan(build_inference(settings)):
            pytest.fail("inference started with a wrong password")
    assert refused.value.reason == "kafka_login_refused"
    assert "'inference'" in str(refused.value)
    assert "not-its-password" not in str(refused.value)


async def test_ingest_with_a_wrong_password_stops_retrying_and_says_why(
    secured_kafka: kafka_local.KafkaLayout, tmp_path: Path
) -> None:
    """Ingest serves while Kafka is down (it retries): a refused login is not "down", so it
    stops retrying, /health stays 503 and an upload is answered with the reason."""
    ingest_db = f"sqlite:///{tmp_path}/ingest.db"
    token = issue_token(open_database(ingest_db), "A", "cam-1").token
    app = build_ingest(
        IngestSettings(
            kafka_bootstrap=secured_kafka.bootstrap,
            kafka_username="ingest",
            kafka_password="not-its-password",
            database_url=ingest_db,
            blob_url=(tmp_path / "blobs").as_uri(),
        )
    )
    async with lifespan(app):
        connection = app.state.connection

        async def gave_up() -> bool:
            return connection.failed is not None

        await wait_until(gave_up, timeout_s=TIMEOUT_S, what="ingest gave up connecting")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            health = await client.get("/health")
            posted = await client.post(
                "/v1/sites/A/cameras/cam-1/images",
                content=frame(2),
                headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
            )
    assert connection.failed.reason == "kafka_login_refused"
    assert health.status_code == 503
    assert (posted.status_code, posted.json()["error"]) == (500, "kafka_login_refused")
    assert "not-its-password" not in posted.text


async def test_the_router_app_copies_only_champion_decisions_to_each_sites_topic(
    secured_kafka: kafka_local.KafkaLayout, tmp_path: Path
) -> None:
    """The decision router as ``defectloop up`` runs it (its app, as principal
    decisions-router): inference's champion decision for site B lands on ``decisions.B``,
    readable by site B's MES; the shadow decision does not."""
    bootstrap = secured_kafka.bootstrap
    tag = uuid.uuid4().hex[:8]
    bundle = BundleBuilder(tmp_path)("v1")
    deployed = bundle.deployed("B")
    champion, shadow = (
        decision(
            "B",
            sha_of(f"{tag}-{role.value}"),
            version=deployed.model_version,
            role=role,
            model_name="tiny",
        )
        for role in (ModelRole.CHAMPION, ModelRole.SHADOW)
    )
    router = build_router(
        DecisionsRouterSettings(
            kafka_bootstrap=bootstrap,
            group_id=f"decisions-router.{tag}",
            **login(who(secured_kafka, "decisions-router")),
        )
    )
    async with AsyncExitStack() as stack:
        got = await stack.enter_async_context(
            collect(
                bootstrap,
                topics.decisions_topic("B"),
                model=PredictionMade,  # the MES contract: prediction.made's event, as published
                where=lambda p: p.image_id in (champion.image_id, shadow.image_id),
                credentials=who(secured_kafka, "mes-B"),
            )
        )
        await stack.enter_async_context(lifespan(router))
        async with started_broker(
            bootstrap, "sasl-inference", credentials=who(secured_kafka, "inference")
        ) as inference:
            await publish_event(inference, shadow)
            await publish_event(inference, champion)
        # The shadow went first with the same key (same partition, read first): a copy of it
        # would be on decisions.B before the champion's.
        await got.wait_for(lambda items: len(items) >= 1, timeout_s=TIMEOUT_S)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=router), base_url="http://router"
        ) as client:

            async def counted() -> dict[str, Any] | None:
                # Counted once the batch is acknowledged and committed, after the copy landed.
                stats: dict[str, Any] = (await client.get("/v1/stats")).json()
                return stats if stats["copied"] >= 1 else None

            stats = await wait_until(counted, timeout_s=TIMEOUT_S, what="the copy counted")
    assert stats["running"]
    assert stats["skipped"] >= 1  # the shadow decision
    assert [p.image_id for p in got.items] == [champion.image_id]


async def test_up_starts_the_router_process_with_its_own_login_and_each_mes_reads_its_site(
    secured_kafka: kafka_local.KafkaLayout, tmp_path: Path
) -> None:
    """What ``defectloop up`` does for the router, for real: the ``decisions.<site>`` topics, the
    process (``python -m defectloop.cli.decisions_router``) with ``decisions-router``'s password
    in its environment, healthy; a champion decision of site A then reaches site A's MES."""
    bootstrap = secured_kafka.bootstrap
    spec = supervisor.ServiceSpec(
        "decisions-router", supervisor.DECISIONS_ROUTER.module, free_port()
    )
    champion = decision("A", sha_of(uuid.uuid4().hex), role=ModelRole.CHAMPION, model_name="tiny")
    await asyncio.to_thread(
        stack.start_decisions_router, secured_kafka, ["A", "B"], home=tmp_path, spec=spec
    )
    try:
        async with collect(
            bootstrap,
            topics.decisions_topic("A"),
            model=PredictionMade,
            where=lambda p: p.image_id == champion.image_id,
            credentials=who(secured_kafka, "mes-A"),
        ) as got:
            async with started_broker(
                bootstrap, "sasl-inference", credentials=who(secured_kafka, "inference")
            ) as inference:
                await publish_event(inference, champion)
            await got.wait_for(lambda items: len(items) >= 1, timeout_s=TIMEOUT_S)
    finally:
        stopped = supervisor.stop_service(spec, home=tmp_path)
    assert [p.prediction_id for p in got.items] == [champion.prediction_id]
    assert stopped


@pytest.mark.parametrize("service", sorted(SERVICE_SETTINGS))
async def test_each_service_logs_in_as_its_principal_and_joins_its_groups(
    service: str, secured_kafka: kafka_local.KafkaLayout, tmp_path: Path
) -> None:
    """Every service's app on the secured broker, with its principal's password only: healthy,
    and each of its consumers got partitions (its group and topics passed the ACLs)."""
    app = build_service(
        service,
        kafka_bootstrap=secured_kafka.bootstrap,
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        blob_url=(tmp_path / "blobs").as_uri(),
        **login(who(secured_kafka, service.replace("_", "-"))),
    )
    async with lifespan(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://service") as client:

            async def healthy() -> bool:
                return (await client.get("/health")).status_code == 200

            await wait_until(healthy, timeout_s=TIMEOUT_S, what=f"{service} healthy")
        consumers = [
            consumer
            for subscriber in app.state.broker.subscribers
            for consumer in (
                getattr(subscriber, "consumer_subgroup", None)
                or [getattr(subscriber, "consumer", None)]
            )
            if consumer is not None
        ]

        async def assigned() -> bool:
            return all(consumer.assignment() for consumer in consumers)

        await wait_until(assigned, timeout_s=TIMEOUT_S, what=f"{service}'s consumers assigned")
    assert len(consumers) == len(app.state.broker.subscribers)
