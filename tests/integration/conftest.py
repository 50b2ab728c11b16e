"""Fixtures of the observability tests: a real local Zipkin, and ingest + inference on the real
broker with a tiny model (the two services' apps in this process, ingest served over HTTP)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from fastapi import FastAPI

from defectloop.common.events import (
    ModelRole,
    PredictionMade,
    ScoredBox,
    image_id_for,
)
from defectloop.testing.events import prediction
from defectloop.testing.net import free_port, wait_until

if TYPE_CHECKING:
    from defectloop.cli.kafka_local import KafkaLayout
    from defectloop.common.kafka_auth import ScramCredentials

SERVICE_SETTINGS = {
    "ingest": "IngestSettings",
    "inference": "InferenceSettings",
    "annotation_sync": "AnnotationSyncSettings",
    "monitor": "MonitorSettings",
    "trainer": "TrainerSettings",
}
"""Each service's package name -> its settings class (in ``defectloop.<service>.settings``)."""


def build_service(service: str, **settings: Any) -> FastAPI:
    """``defectloop.<service>.main.build_app`` with its settings class built from ``settings``."""
    import importlib

    main = importlib.import_module(f"defectloop.{service}.main")
    module = importlib.import_module(f"defectloop.{service}.settings")
    app: FastAPI = main.build_app(getattr(module, SERVICE_SETTINGS[service])(**settings))
    return app


def decision(
    site: str,
    sha: str,
    *,
    version: str = "v1",
    role: ModelRole = ModelRole.CHAMPION,
    defective: bool = False,
    model_name: str = "m",
    blob_uri: str = "file:///x.png",
    captured_at: datetime | None = None,
) -> PredictionMade:
    """The decision of model ``version`` in ``role`` on the 64x64 image ``sha`` of camera
    ``cam-1`` of ``site`` (captured now unless ``captured_at``): a defective one has one box
    scored 0.9, a good one none (score 0.1)."""
    return prediction(
        site,
        image_id_for(site, "cam-1", sha),
        version=version,
        role=role,
        sha256=sha,
        boxes=(ScoredBox(label="scratch", x=1, y=2, w=3, h=4, score=0.9),) if defective else (),
        defective=defective,
        decision_score=0.9 if defective else 0.1,
        model_name=model_name,
        blob_uri=blob_uri,
        captured_at=captured_at,
    )


def who(layout: KafkaLayout, name: str) -> ScramCredentials:
    """The login (``ScramCredentials``) of principal ``name`` on the secured broker ``layout``."""
    from defectloop.cli import kafka_local

    return kafka_local.credentials(layout)[name]


SECURED_SITES = ("A", "B")
"""The sites of the secured broker: their MES principals and ``decisions.<site>`` topics."""


@pytest.fixture(scope="module")
def secured_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A production-profile broker (SASL/SCRAM only, ACLs per principal, sites A and B) for one
    test module: ``kafka_local.credentials(layout)[name]`` is each principal's login."""
    from defectloop.cli import kafka_local

    layout = kafka_local.KafkaLayout(
        tmp_path_factory.mktemp("kafka-sasl"),
        port=free_port(),
        controller_port=free_port(),
        profile="production",
        sites=SECURED_SITES,
    )
    kafka_local.start(layout, partitions=2)
    try:
        yield layout
    finally:
        kafka_local.stop(layout)


@pytest.fixture(scope="session")
def zipkin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real Zipkin server (its Maven Central jar, as `defectloop up` runs it) on a free port."""
    from defectloop.cli import zipkin_local

    layout = zipkin_local.ZipkinLayout(tmp_path_factory.mktemp("zipkin"), port=free_port())
    zipkin_local.start(layout)
    try:
        yield layout
    finally:
        zipkin_local.stop(layout)


@dataclass
class Pipeline:
    """ingest (over HTTP) and inference running on the real broker for one fresh site."""

    site: str
    camera: str
    token: str
    model_version: str
    ingest_url: str
    inference_url: str
    ingest: FastAPI
    inference: FastAPI

    async def post(self, client: httpx.AsyncClient, png: bytes) -> httpx.Response:
        return await client.post(
            f"{self.ingest_url}/v1/sites/{self.site}/cameras/{self.camera}/images",
            content=png,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "image/png"},
        )


def frame(index: int) -> bytes:
    """A simulated camera frame that passes ingest's quality floors."""
    from defectloop.factory_sim import encode_png, get_site, render

    return bytes(encode_png(render(get_site("A"), index, seed=7).pixels))


@pytest.fixture
def pipeline(
    kafka_bootstrap: str, tmp_path: Path, unique_group: str
) -> Callable[..., AbstractAsyncContextManager[Pipeline]]:
    """``async with pipeline(**settings) as p``: ingest + inference started (extra settings, e.g.
    ``zipkin_endpoint``, go to both), a tiny champion deployed for ``p.site``."""

    @asynccontextmanager
    async def run(**extra: Any) -> AsyncIterator[Pipeline]:
        from defectloop.common.kafka import build_broker, publish_event
        from defectloop.inference.main import build_app as build_inference
        from defectloop.inference.settings import InferenceSettings
        from defectloop.ingest.auth import issue_token
        from defectloop.ingest.main import build_app as build_ingest
        from defectloop.ingest.records import open_database
        from defectloop.ingest.settings import IngestSettings
        from defectloop.testing.bundles import BundleBuilder
        from defectloop.testing.http import serve

        site = "obs" + uuid.uuid4().hex[:8]
        blobs = (tmp_path / "blobs").as_uri()
        ingest_db = f"sqlite:///{tmp_path}/ingest.db"
        token = issue_token(open_database(ingest_db), site, "cam-1").token
        bundle = BundleBuilder(tmp_path)("v1")
        producer = build_broker(kafka_bootstrap, client_id="obs-deployer")
        await producer.start()
        try:
            await publish_event(producer, bundle.deployed(site))
        finally:
            await producer.stop()

        common = {"kafka_bootstrap": kafka_bootstrap, "blob_url": blobs, **extra}
        ingest = build_ingest(IngestSettings(database_url=ingest_db, **common))
        inference = build_inference(
            InferenceSettings(
                group_id=unique_group,
                providers="cpu",
                database_url=f"sqlite:///{tmp_path}/inference.db",
                max_wait_ms=50,
                **common,
            )
        )
        async with AsyncExitStack() as stack:
            inference_url = await stack.enter_async_context(serve(inference))
            url = await stack.enter_async_context(serve(ingest))
            async with httpx.AsyncClient() as client:

                async def ready() -> bool:
                    return (await client.get(f"{url}/health")).status_code == 200

                await wait_until(ready, timeout_s=60, what="ingest connected to Kafka")
            yield Pipeline(
                site, "cam-1", token, bundle.version, url, inference_url, ingest, inference
            )

    return run
