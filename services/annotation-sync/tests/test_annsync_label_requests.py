"""``labels.requested``: a site's random share is raised until the request expires or is served,
within the daily budget, once per request id (unit level, then through the real broker)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from defectloop.annotation_sync import store
from defectloop.annotation_sync.api import install
from defectloop.annotation_sync.sampling import Quota, SamplingPolicy, SamplingReason, decide
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.annotation_sync.sync import AnnotationSync
from defectloop.common import topics
from defectloop.common.db import make_engine
from defectloop.common.events import (
    AnnotationCompleted,
    LabelsRequested,
    PredictionMade,
)
from defectloop.common.kafka import build_broker, publish_event
from defectloop.testing.net import free_port, wait_until

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


@pytest.fixture
def predict(annsync: Any) -> Callable[..., PredictionMade]:
    """``predict(site, i)``: a champion's prediction of image ``i`` of ``site``, not defective."""

    def make(site: str, i: int, *, at: datetime = NOW) -> PredictionMade:
        made: PredictionMade = annsync.prediction(site, f"{site}-img-{i}", captured_at=at)
        return made

    return make


def _request(site: str, rid: str = "req-1", **kw: Any) -> LabelsRequested:
    values: dict[str, Any] = {
        "site_id": site,
        "request_id": rid,
        "reason": "incident",
        "incident_id": "inc-1",
        "random_share": 1.0,
        "target_labels": 2,
        "expires_at": NOW + timedelta(days=1),
    }
    values.update(kw)
    return LabelsRequested(**values)


def _settings(tmp: Path, **kw: Any) -> AnnotationSyncSettings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp / 'db.sqlite'}",
        "blob_url": (tmp / "blobs").as_uri(),
        "label_studio_url": "http://127.0.0.1:9",  # nothing listens: pushes stay pending
        "label_studio_token": "x" * 40,
        "signing_secret": "unit-test-secret",
        "random_share": 0.0,
        "sample_uncertain": False,
        "sample_outliers": False,
        "overlap_share": 0.0,
        "daily_budget": 100,
    }
    values.update(kw)
    return AnnotationSyncSettings(**values)


def _sync(tmp: Path, clock: list[datetime], **kw: Any) -> AnnotationSync:
    settings = _settings(tmp, **kw)

    async def publish(_: AnnotationCompleted) -> None:
        raise AssertionError("nothing is published here")

    return AnnotationSync(
        settings, make_engine(settings.resolved_database_url()), publish, clock=lambda: clock[0]
    )


def _label(sync: AnnotationSync, site: str, image_id: str, status: str = "completed") -> None:
    """A current annotation of ``image_id`` as the pull side records it."""
    store.record_annotation(
        sync.engine,
        store.AnnotationRecord(
            annotation_id=f"ann-{image_id}",
            ls_annotation_id=abs(hash(image_id)) % 10**6,
            site_id=site,
            image_id=image_id,
            task_id=1,
            annotator="a@x",
            status=status,
            boxes_json="[]",
            day=NOW.date(),
            updated_at=NOW,
            event_json="{}",
        ),
        None,
    )


# --- pure rules ------------------------------------------------------------------------------


@pytest.mark.unit
def test_an_active_request_lifts_the_campaign_target_for_random_only() -> None:
    reached = Quota(
        used_today=0, daily_budget=10, campaign_done=5, campaign_target=5, requested=True
    )
    assert reached.allows(SamplingReason.RANDOM)
    assert not reached.allows(SamplingReason.UNCERTAIN)


@pytest.mark.unit
def test_the_daily_budget_binds_even_with_a_request(predict: Callable[..., PredictionMade]) -> None:
    spent = Quota(
        used_today=10, daily_budget=10, campaign_done=0, campaign_target=50, requested=True
    )
    policy = SamplingPolicy(random_share=1.0)
    assert decide(predict("A", 1), policy, spent) is None


# --- the service's state -----------------------------------------------------------------------


@pytest.mark.unit
async def test_a_request_raises_the_share_until_its_target_is_labelled(
    tmp_path: Path, predict: Callable[..., PredictionMade]
) -> None:
    clock = [NOW]
    sync = _sync(tmp_path, clock)
    assert await sync.on_prediction(predict("A", 0)) is None  # share 0: nothing sampled
    assert await sync.on_labels_requested(_request("A"))
    first = await sync.on_prediction(predict("A", 1))
    second = await sync.on_prediction(predict("A", 2))
    assert first is not None
    assert second is not None
    assert (first.reason, second.reason) == ("random", "random")
    [state] = sync.request_states("A")
    assert (state.labels_done, state.active) == (0, True)
    _label(sync, "A", first.image_id)
    _label(sync, "A", second.image_id, status="skipped")  # a skip is not a label
    assert sync.request_states("A")[0].labels_done == 1
    _label(sync, "A", f"{second.image_id}-unrelated")  # not a sample of the request
    assert sync.request_states("A")[0].active
    store.record_annotation(
        sync.engine,
        store.AnnotationRecord(
            annotation_id="ann-2-v2",
            ls_annotation_id=2,
            site_id="A",
            image_id=second.image_id,
            task_id=2,
            annotator="a@x",
            status="completed",
            boxes_json="[]",
            day=NOW.date(),
            updated_at=NOW,
            event_json="{}",
        ),
        f"ann-{second.image_id}",
    )
    [state] = sync.request_states("A")
    assert (state.labels_done, state.active) == (2, False)
    assert await sync.on_prediction(predict("A", 3)) is None  # back to the site's share


@pytest.mark.unit
async def test_a_request_ends_when_it_expires(
    tmp_path: Path, predict: Callable[..., PredictionMade]
) -> None:
    clock = [NOW]
    sync = _sync(tmp_path, clock)
    await sync.on_labels_requested(_request("A", expires_at=NOW + timedelta(minutes=5)))
    assert await sync.on_prediction(predict("A", 1)) is not None
    clock[0] = NOW + timedelta(minutes=6)
    assert await sync.on_prediction(predict("A", 2)) is None
    assert not sync.request_states("A")[0].active


@pytest.mark.unit
async def test_a_request_never_exceeds_the_daily_budget(
    tmp_path: Path, predict: Callable[..., PredictionMade]
) -> None:
    sync = _sync(tmp_path, [NOW], daily_budget=2)
    await sync.on_labels_requested(_request("A", target_labels=50))
    sampled = [await sync.on_prediction(predict("A", i)) for i in range(5)]
    assert sum(s is not None for s in sampled) == 2


@pytest.mark.unit
async def test_requests_are_idempotent_and_per_site(
    tmp_path: Path, predict: Callable[..., PredictionMade]
) -> None:
    sync = _sync(tmp_path, [NOW])
    assert await sync.on_labels_requested(_request("A"))
    assert not await sync.on_labels_requested(_request("A", random_share=0.5))  # redelivery
    assert [s.request.random_share for s in sync.request_states("A")] == [1.0]
    assert sync.request_states("B") == []
    assert await sync.on_prediction(predict("B", 1)) is None


@pytest.mark.unit
async def test_active_requests_are_in_the_campaign_and_progress_api(
    tmp_path: Path, predict: Callable[..., PredictionMade]
) -> None:
    sync = _sync(tmp_path, [NOW])
    await sync.on_labels_requested(_request("A"))
    await sync.on_prediction(predict("A", 1))
    app = FastAPI()
    install(app, sync)
    client = TestClient(app)
    campaign = client.get("/v1/sites/A/campaigns").json()
    progress = client.get("/v1/sites/A/annotation/progress").json()
    for body in (campaign, progress):
        [req] = body["label_requests"]
        assert req["request_id"] == "req-1"
        assert (req["target_labels"], req["labels_done"], req["active"]) == (2, 0, True)
        assert req["random_share"] == 1.0
    assert client.get("/v1/sites/B/campaigns").json()["label_requests"] == []


# --- through the real broker -----------------------------------------------------------------


@pytest.mark.integration
async def test_labels_requested_from_kafka_raises_sampling_once(
    kafka_bootstrap: str, tmp_path: Path, annsync: Any, predict: Callable[..., PredictionMade]
) -> None:
    site = "r" + uuid.uuid4().hex[:10]
    group = f"annsync-requests-{site}"
    settings = _settings(
        tmp_path,
        port=free_port(),
        sites=[site],
        ignore_other_sites=True,
        daily_budget=3,
        poll_interval_s=3600.0,
        log_format="console",
    )
    producer = build_broker(kafka_bootstrap, client_id="annsync-requests-producer")
    await producer.start()
    now = datetime.now(UTC)
    try:
        async with annsync.run_service(settings, kafka_bootstrap, group) as svc:
            for i in range(2):  # before the request: share 0, nothing sampled
                await publish_event(producer, predict(site, i, at=now))
            ends = await annsync.end_offsets(kafka_bootstrap, topics.PREDICTION_MADE)
            await wait_until(
                lambda: annsync.committed_past(kafka_bootstrap, group, ends),
                what="the first predictions to be consumed",
            )
            assert store.count_sampled(svc.sync.engine, site) == 0
            request = _request(site, rid=f"req-{site}", expires_at=now + timedelta(hours=1))
            request = request.model_copy(update={"target_labels": 10})
            await publish_event(producer, request)
            await publish_event(producer, request)  # redelivered: one request
            requests_end = await annsync.end_offsets(kafka_bootstrap, topics.LABELS_REQUESTED)
            await wait_until(
                lambda: annsync.committed_past(kafka_bootstrap, group, requests_end),
                what="the request to be consumed",
            )
            for i in range(2, 8):
                await publish_event(producer, predict(site, i, at=now))

            async def sampled() -> int:
                return store.count_sampled(svc.sync.engine, site)

            await wait_until(sampled, what="samples under the request")
            ends = await annsync.end_offsets(kafka_bootstrap, topics.PREDICTION_MADE)
            await wait_until(
                lambda: annsync.committed_past(kafka_bootstrap, group, ends),
                what="every prediction to be consumed",
            )
            states = svc.sync.request_states(site)
    finally:
        await producer.stop()
    assert [s.request.request_id for s in states] == [f"req-{site}"]
    assert states[0].active
    samples = [store.get_sample(svc.sync.engine, site, f"{site}-img-{i}") for i in range(8)]
    reasons = [s.reason if s is not None else None for s in samples]
    assert reasons[:2] == [None, None]
    assert reasons.count("random") == 3  # the daily budget, not the 6 asked for
