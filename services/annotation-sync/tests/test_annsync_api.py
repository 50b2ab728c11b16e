"""HTTP API without Label Studio: bad webhook input, signed image links, campaigns."""

from __future__ import annotations

import time
from datetime import date
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlmodel import Session

from defectloop.annotation_sync import signing, store
from defectloop.annotation_sync.api import install
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.db import make_engine
from defectloop.common.events import AnnotationCompleted

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret"


@pytest.fixture
def client(tmp_path: Path) -> tuple[TestClient, AnnotationSync, str]:
    settings = AnnotationSyncSettings(
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        signing_secret=SECRET,
        label_studio_url="http://127.0.0.1:9",
        label_studio_token="x" * 40,
    )
    engine = make_engine(settings.resolved_database_url())

    async def publish(_: AnnotationCompleted) -> None:
        raise AssertionError("nothing may be published")

    sync = AnnotationSync(settings, engine, publish)
    uri = LocalBlobStore(tmp_path / "blobs").put(b"\x89PNG fake", suffix=".png")
    with Session(engine) as s:
        s.add(
            store.Sample(
                key="A/img-1",
                site_id="A",
                image_id="img-1",
                camera_id="c",
                prediction_id="p",
                reason="random",
                day=date(2026, 1, 1),
                blob_uri=uri,
                width=10,
                height=10,
                model_version="v1",
                predicted_defective=False,
            )
        )
        s.commit()
    app = FastAPI()
    install(app, sync)
    return TestClient(app), sync, uri


def _hook(
    client: TestClient, body: bytes | str, secret: str | None = None
) -> tuple[int, dict[str, str]]:
    headers = {"X-Webhook-Secret": secret or signing.webhook_secret(SECRET)}
    r = client.post("/v1/labelstudio/webhook?site=A", content=body, headers=headers)
    return r.status_code, r.json()


def test_webhook_without_the_secret_is_401(client: tuple[TestClient, AnnotationSync, str]) -> None:
    code, body = _hook(client[0], "{}", secret="wrong")
    assert (code, body["error"]) == (401, "bad_secret")


@pytest.mark.parametrize("secret", ["sécret-ünicode", "\u2603" * 64])
def test_webhook_with_a_non_ascii_secret_is_401_not_500(
    client: tuple[TestClient, AnnotationSync, str], secret: str
) -> None:
    # Raw bytes on the wire: the server reads them as latin-1 text, non-ASCII.
    r = client[0].post(
        "/v1/labelstudio/webhook?site=A",
        content="{}",
        headers={"X-Webhook-Secret": secret.encode()},
    )
    assert (r.status_code, r.json()["error"]) == (401, "bad_secret")


def test_webhook_that_is_not_json_is_400(client: tuple[TestClient, AnnotationSync, str]) -> None:
    code, body = _hook(client[0], b"\xff{not json")
    assert (code, body["error"]) == (400, "malformed_payload")


def test_webhook_without_action_is_422(client: tuple[TestClient, AnnotationSync, str]) -> None:
    code, body = _hook(client[0], '{"annotation": {}}')
    assert (code, body["error"]) == (422, "malformed_payload")


def test_annotation_event_without_task_is_422(
    client: tuple[TestClient, AnnotationSync, str],
) -> None:
    code, body = _hook(
        client[0],
        '{"action": "ANNOTATION_CREATED", "annotation": {"id": 1, "completed_by": 1, '
        '"updated_at": "2026-01-01T00:00:00Z"}}',
    )
    assert (code, body["error"]) == (422, "malformed_payload")


def test_annotation_with_malformed_box_is_422(
    client: tuple[TestClient, AnnotationSync, str],
) -> None:
    code, _body = _hook(
        client[0],
        '{"action": "ANNOTATION_CREATED", "task": {"id": 5, "data": {"defectloop_key": "A/img-1"}},'
        ' "annotation": {"id": 1, "completed_by": 1, "updated_at": "2026-01-01T00:00:00Z",'
        ' "result": [{"type": "rectanglelabels", "value": {"x": 1}}]}}',
    )
    assert code == 422


def test_unrelated_actions_are_ignored(client: tuple[TestClient, AnnotationSync, str]) -> None:
    code, body = _hook(client[0], '{"action": "PROJECT_UPDATED"}')
    assert (code, body["status"]) == (200, "ignored")


def test_signed_link_serves_the_image(client: tuple[TestClient, AnnotationSync, str]) -> None:
    c, sync, _ = client
    url = sync.image_link("A", "img-1").split("/", 3)[3]
    r = c.get("/" + url)
    assert r.status_code == 200
    assert r.content == b"\x89PNG fake"


def test_expired_or_foreign_links_are_refused(
    client: tuple[TestClient, AnnotationSync, str],
) -> None:
    c = client[0]
    past = int(time.time()) - 1
    sig = signing.sign(SECRET, "A", "img-1", past)
    assert c.get(f"/v1/images/img-1?site=A&exp={past}&sig={sig}").json()["error"] == "expired"
    exp = int(time.time()) + 60
    sig_b = signing.sign(SECRET, "B", "img-1", exp)
    assert c.get(f"/v1/images/img-1?site=A&exp={exp}&sig={sig_b}").status_code == 403
    # A valid link of site B for an image of site A finds nothing.
    assert c.get(f"/v1/images/img-1?site=B&exp={exp}&sig={sig_b}").status_code == 404


def test_campaign_target_can_be_set_and_read(
    client: tuple[TestClient, AnnotationSync, str],
) -> None:
    c = client[0]
    assert c.get("/v1/sites/A/campaigns").json()["target"] == 1000
    put = c.put("/v1/sites/A/campaigns", json={"target": 40, "name": "drift-june"})
    assert put.status_code == 200
    got = c.get("/v1/sites/A/campaigns").json()
    assert (got["target"], got["name"]) == (40, "drift-june")
    assert c.put("/v1/sites/A/campaigns", json={"target": -1}).status_code == 422


def test_progress_of_a_site_without_annotations(
    client: tuple[TestClient, AnnotationSync, str],
) -> None:
    body = client[0].get("/v1/sites/A/annotation/progress").json()
    assert body["campaign"]["sampled"] == 1
    assert body["by_annotator_day"] == []
    assert body["agreement"]["pairs"] == 0


def test_errors_use_the_one_body_of_every_service(
    client: tuple[TestClient, AnnotationSync, str],
) -> None:
    _code, body = _hook(client[0], "{}", secret="wrong")
    assert set(body) == {"error", "detail", "hint"}
    assert body["hint"]
