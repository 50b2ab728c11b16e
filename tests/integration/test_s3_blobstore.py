"""The S3 blob store and ``s3://`` model bundles against a real S3 server (S3Proxy on 127.0.0.1).

S3Proxy (``org.gaul:s3proxy``, filesystem backend) is started once for this module by
``defectloop.cli.s3proxy_local``; it checks request signatures, so credentials are real too.
The last test runs the inference app on the real broker with its images *and* its bundle in S3.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from defectloop.cli import s3proxy_local
from defectloop.common import topics
from defectloop.common.blobstore import S3BlobStore, open_blob_store, s3_client
from defectloop.common.errors import ConfigError, IntegrityMismatchError, NotFoundError
from defectloop.common.events import (
    ImageCaptured,
    ModelDeployed,
    ModelRole,
    PredictionMade,
    QualityMetrics,
    image_id_for,
    sha256_hex,
)
from defectloop.common.kafka import publish_event
from defectloop.inference.bundles import BUNDLE_FILES, BundleSource, load_deployed
from defectloop.inference.main import build_app
from defectloop.inference.settings import InferenceSettings
from defectloop.testing.bundles import BundleBuilder, TinyBundle
from defectloop.testing.kafka import collect, started_broker
from defectloop.testing.net import free_port

pytestmark = pytest.mark.integration

BUCKET = "defectloop"
TIMEOUT_S = 90.0


@pytest.fixture(scope="module")
def s3proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[s3proxy_local.S3ProxyLayout]:
    layout = s3proxy_local.S3ProxyLayout(tmp_path_factory.mktemp("s3proxy"), port=free_port())
    s3proxy_local.start(layout)
    try:
        s3proxy_local.client(layout).create_bucket(Bucket=BUCKET)
        yield layout
    finally:
        s3proxy_local.stop(layout)


@pytest.fixture
def client(s3proxy: s3proxy_local.S3ProxyLayout) -> Any:
    return s3proxy_local.client(s3proxy)


@pytest.fixture
def store(client: Any) -> S3BlobStore:
    return S3BlobStore(BUCKET, prefix="images", client=client)


def upload_bundle(store: S3BlobStore, bundle: TinyBundle) -> str:
    """Put a bundle's files under ``bundles/<version>/`` (as a trainer publishing to S3 would);
    return the ``s3://`` prefix ``model.deployed`` names."""
    uri = ""
    for name in BUNDLE_FILES:
        path = bundle.path / name
        if path.is_file():
            uri = store.put_object(f"bundles/{bundle.version}/{name}", path.read_bytes())
    return uri.rsplit("/", 1)[0]


def test_s3_blob_store_round_trip_is_content_addressed(store: S3BlobStore) -> None:
    uri = store.put(b"\x89PNG fake bytes", suffix=".png")
    again = store.put(b"\x89PNG fake bytes", suffix=".png")
    assert uri == again == store.uri_for(sha256_hex(b"\x89PNG fake bytes"), suffix=".png")
    assert uri.startswith(f"s3://{BUCKET}/images/")
    assert store.get(uri) == b"\x89PNG fake bytes"
    assert store.exists(uri)


def test_s3_missing_key_is_a_missing_blob(store: S3BlobStore) -> None:
    absent = store.uri_for("0" * 64, suffix=".png")
    assert not store.exists(absent)
    with pytest.raises(NotFoundError) as missing:
        store.get(absent)
    assert missing.value.reason == "missing_blob"


def test_s3_object_changed_in_the_bucket_is_refused(store: S3BlobStore, client: Any) -> None:
    uri = store.put(b"original", suffix=".png")
    client.put_object(Bucket=BUCKET, Key=uri.split(f"{BUCKET}/", 1)[1], Body=b"replaced")
    with pytest.raises(IntegrityMismatchError) as corrupt:
        store.get(uri)
    assert corrupt.value.reason == "blob_corrupt"


def test_s3_wrong_credentials_are_a_config_error(s3proxy: s3proxy_local.S3ProxyLayout) -> None:
    wrong = s3_client(s3proxy.endpoint, access_key="nobody", secret_key="wrong")
    with pytest.raises(ConfigError):
        S3BlobStore(BUCKET, client=wrong).put(b"x")


def test_open_blob_store_reads_the_s3_server_from_the_environment(
    s3proxy: s3proxy_local.S3ProxyLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3proxy_local.client_env(s3proxy).items():
        monkeypatch.setenv(name, value)
    store = open_blob_store(f"s3://{BUCKET}/env-images")
    uri = store.put(b"from env")
    assert uri.startswith(f"s3://{BUCKET}/env-images/")
    assert store.get(uri) == b"from env"


def test_each_store_signs_with_the_credentials_the_environment_has_now(
    s3proxy: s3proxy_local.S3ProxyLayout, monkeypatch: pytest.MonkeyPatch
) -> None:
    # boto3's default session keeps the first credentials it resolves for the whole process: a
    # store opened later (another test's S3 server, rotated keys) signed with stale ones.
    for name, value in s3proxy_local.client_env(s3proxy).items():
        monkeypatch.setenv(name, value)
    assert (
        open_blob_store(f"s3://{BUCKET}/env-rotation").get(
            open_blob_store(f"s3://{BUCKET}/env-rotation").put(b"first keys")
        )
        == b"first keys"
    )
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(ConfigError):
        open_blob_store(f"s3://{BUCKET}/env-rotation").put(b"stale keys would pass")


def test_bundles_in_s3_are_fetched_verified_and_loaded(
    store: S3BlobStore, client: Any, tmp_path: Path
) -> None:
    build = BundleBuilder(tmp_path)
    signed, unsigned, edited = build("s3-v1"), build("s3-v2", signed=False), build("s3-v3")
    manifest = json.loads((edited.path / "model.json").read_text())
    manifest["decoding"].update(score_threshold=0.01, decision_threshold=0.01)
    (edited.path / "model.json").write_text(json.dumps(manifest))
    source = BundleSource(cache_dir=tmp_path / "cache", client=client)

    def deployed(bundle: TinyBundle) -> ModelDeployed:
        return bundle.deployed("s3site", artifact_uri=upload_bundle(store, bundle))

    detector = load_deployed(deployed(signed), source=source, providers="cpu")
    assert detector.manifest.version == "s3-v1"
    reasons = []
    for bundle in (unsigned, edited):
        with pytest.raises(IntegrityMismatchError) as refused:
            load_deployed(deployed(bundle), source=source, providers="cpu")
        reasons.append(refused.value.reason)
    assert reasons == ["bundle_unsigned", "signature_invalid"]


async def test_inference_serves_images_and_a_bundle_from_s3(
    s3proxy: s3proxy_local.S3ProxyLayout,
    store: S3BlobStore,
    kafka_bootstrap: str,
    unique_group: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The app finds the S3 server as a deployed service would: from its environment.
    for name, value in s3proxy_local.client_env(s3proxy).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DEFECTLOOP_CACHE", str(tmp_path / "cache"))
    site = "s3" + uuid.uuid4().hex[:10]
    bundle = BundleBuilder(tmp_path)("s3-app-v1")
    ok, png = cv2.imencode(".png", np.random.default_rng(0).integers(0, 256, (48, 64), np.uint8))
    assert ok
    body = bytes(png)
    digest = sha256_hex(body)
    image = ImageCaptured(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id_for(site, "cam-1", digest),
        sha256=digest,
        blob_uri=store.put(body, suffix=".png"),
        captured_at=datetime.now(UTC),
        width=64,
        height=48,
        quality=QualityMetrics(sharpness=10.0, brightness=100.0, contrast=20.0, uniform=False),
    )
    settings = InferenceSettings(
        kafka_bootstrap=kafka_bootstrap,
        blob_url=f"s3://{BUCKET}/images",
        group_id=unique_group,
        providers="cpu",
        intra_op_threads=1,
        decode_workers=2,
    )
    app = build_app(settings)
    async with (
        collect(
            kafka_bootstrap, topics.PREDICTION_MADE, where=lambda e: e.site_id == site
        ) as predictions,
        started_broker(kafka_bootstrap, "s3-test") as producer,
        app.router.lifespan_context(app),
    ):
        await asyncio.wait_for(app.state.router.ready.wait(), TIMEOUT_S)
        deployed = bundle.deployed(site, artifact_uri=upload_bundle(store, bundle))
        await publish_event(producer, deployed)
        router = app.state.router
        await asyncio.wait_for(
            router.wait_for(lambda r: r.serving_version(site, ModelRole.CHAMPION) == "s3-app-v1"),
            TIMEOUT_S,
        )
        await publish_event(producer, image)
        decided: list[PredictionMade] = await predictions.wait_for(
            lambda items: len(items) >= 1, TIMEOUT_S
        )
    assert [(p.image_id, p.model_version, p.blob_uri) for p in decided] == [
        (image.image_id, "s3-app-v1", image.blob_uri)
    ]
