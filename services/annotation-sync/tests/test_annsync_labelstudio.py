"""The annotation loop against a real Label Studio and a real Kafka broker.

One scenario (module fixture) drives it end to end, and each test checks one behaviour of it:
predictions are published to Kafka; annotation-sync samples them and creates Label Studio tasks;
simulated annotators (a perfect one, then a sloppy one for the overlap) annotate through Label
Studio's REST API; Label Studio's webhooks bring the annotations back as ``annotation.completed``.
One annotation is made while annotation-sync is down (its webhook is lost): the restarted service
reconciles it by polling, and re-emits nothing it had already emitted.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from sklearn.metrics import cohen_kappa_score

from defectloop.annotation_sync.sampling import reason_for
from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import (
    AnnotationCompleted,
    AnnotationStatus,
    Box,
    ModelRole,
    PredictionMade,
    ScoredBox,
    prediction_id_for,
)
from defectloop.common.kafka import build_broker, publish_event
from defectloop.factory_sim.annotators import (
    PROFILES,
    AnnotatorTeam,
    LabelStudioAPI,
    SimAnnotator,
    SkillProfile,
)
from defectloop.factory_sim.cameras import Truth, TruthLog, frame
from defectloop.factory_sim.drift import Drift
from defectloop.factory_sim.sites import get_site
from defectloop.testing.kafka import collect
from defectloop.testing.net import wait_until
from defectloop.vision.agreement import iou

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES = 10
CAMERA = "cam-1"
# Careless enough that the two annotators disagree on some images (deterministic per image).
CARELESS = SkillProfile(
    "careless",
    jitter_px=2.0,
    miss_rate=0.5,
    wrong_class_rate=0.1,
    spurious_rate=0.3,
    skips_unreadable=False,
)


@dataclass
class Scenario:
    site: str
    service: Any
    truths: dict[str, Truth]
    events: list[AnnotationCompleted]
    tasks: list[dict[str, Any]]
    perfect: SimAnnotator
    careless: SimAnnotator
    progress: dict[str, Any] = field(default_factory=dict)
    predictions: list[PredictionMade] = field(default_factory=list)
    sampled_rows_before_restart: int = 0


def _prediction(
    site: str, truth: Truth, blob_uri: str, sha: str, *, role: ModelRole, outlier: bool = False
) -> PredictionMade:
    boxes = tuple(
        ScoredBox(label=b.label, x=b.x, y=b.y, w=b.w, h=b.h, score=0.9) for b in truth.boxes
    )
    return PredictionMade(
        site_id=site,
        camera_id=CAMERA,
        prediction_id=prediction_id_for(truth.image_id, "v1", role.value),
        image_id=truth.image_id,
        sha256=sha,
        blob_uri=blob_uri,
        width=truth.width,
        height=truth.height,
        boxes=boxes,
        defective=bool(boxes),
        decision_score=0.9 if boxes else 0.0,
        decision_threshold=0.5,
        model_name="centernet",
        model_version="v1",
        role=role,
        outlier_score=5.0 if outlier else 0.2,
        outlier=outlier,
        captured_at=datetime.now(UTC),
        queue_latency_ms=1.0,
        inference_latency_ms=1.0,
    )


@pytest.fixture(scope="module")
async def scenario(
    label_studio: Any,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    annsync: Any,
) -> AsyncIterator[Scenario]:
    run_service = annsync.run_service
    service_settings = annsync.service_settings
    tmp: Path = tmp_path_factory.mktemp("annsync")
    site = "s" + uuid.uuid4().hex[:10]
    group = f"annsync-test-{site}"
    settings = service_settings(tmp, label_studio, site, ignore_other_sites=True)
    blobs = LocalBlobStore(tmp / "blobs")
    truth_log = TruthLog(tmp / "truth.jsonl")
    profile = get_site("A").with_size(256)
    blur = [Drift("blur", start_index=N_IMAGES - 1, severity=1.0)]  # the last one is unreadable

    predictions: list[PredictionMade] = []
    truths: dict[str, Truth] = {}
    for i in range(N_IMAGES):
        png, truth = frame(profile, CAMERA, 3, i, blur)
        truth = Truth(**{**truth.__dict__, "site": site})
        truth_log.append(truth)
        truths[truth.image_id] = truth
        uri = blobs.put(png, suffix=".png")
        predictions.append(
            _prediction(
                site,
                truth,
                uri,
                uri.rsplit("/", 1)[1][:64],
                role=ModelRole.CHAMPION,
                outlier=(i == 0),
            )
        )
    shadow = _prediction(
        site,
        truths[predictions[1].image_id],
        predictions[1].blob_uri,
        predictions[1].sha256,
        role=ModelRole.SHADOW,
    )

    producer = build_broker(kafka_bootstrap, client_id="annsync-test-producer")
    await producer.start()
    ls = LabelStudioAPI(label_studio.url, label_studio.token)
    perfect = SimAnnotator("perfect", PROFILES["perfect"], site)
    careless = SimAnnotator("careless", CARELESS, site)
    try:
        async with collect(
            kafka_bootstrap,
            topics.ANNOTATION_COMPLETED,
            where=lambda e: e.site_id == site,
        ) as collector:
            async with run_service(settings, kafka_bootstrap, group) as svc:
                for p in [*predictions, shadow, predictions[2]]:  # a shadow and a redelivery
                    await publish_event(producer, p)

                async def all_pushed() -> bool:
                    from defectloop.annotation_sync import store

                    return (
                        sum(
                            (s := store.get_sample(svc.sync.engine, site, p.image_id)) is not None
                            and s.task_id is not None
                            for p in predictions
                        )
                        == N_IMAGES
                    )

                await wait_until(
                    all_pushed, timeout_s=120, what="every sampled image to become a task"
                )
                team_p = AnnotatorTeam(site, ls, truth_log, [perfect])
                team_c = AnnotatorTeam(site, ls, truth_log, [careless])
                assert await team_p.setup()
                assert await team_c.setup()
                await team_p.step(
                    limit=N_IMAGES - 1
                )  # leave one task for while the service is down
                await team_c.step()
                # An update: the same result again supersedes the first version.
                first = (await ls.tasks(team_p.project or 0))[0]
                mine = next(a for a in first["annotations"] if a["completed_by"] == perfect.user_id)
                resp = await ls.http.patch(
                    f"/api/annotations/{mine['id']}/", json={"result": mine["result"]}
                )
                resp.raise_for_status()
                expected_live = (N_IMAGES - 1) + N_IMAGES + 1
                await collector.wait_for(lambda items: len(items) >= expected_live, timeout_s=120)
            # annotation-sync is down: this annotation's webhook is lost.
            assert await team_p.step() == 1
            settings2 = service_settings(
                tmp, label_studio, site, port=settings.port, ignore_other_sites=True
            )
            async with run_service(settings2, kafka_bootstrap, group) as svc2:
                expected = expected_live + 1
                await collector.wait_for(lambda items: len(items) >= expected, timeout_s=120)
                # Redelivered predictions and another poll change nothing.
                for p in predictions:
                    await svc2.sync.on_prediction(p)
                assert await svc2.sync.reconcile_all() == 0
                # A marker on the same key (same partition): once it is read, all before it is too.
                marker = AnnotationCompleted(
                    site_id=site,
                    camera_id=CAMERA,
                    image_id="marker",
                    annotation_id="marker",
                    annotator="test",
                    status=AnnotationStatus.SKIPPED,
                    skip_reason="marker",
                    lead_time_s=0,
                )
                await publish_event(producer, marker)
                await collector.wait_for(
                    lambda items: any(e.annotation_id == "marker" for e in items), timeout_s=120
                )
                async with httpx.AsyncClient(base_url=svc2.url) as http:
                    progress = (await http.get(f"/v1/sites/{site}/annotation/progress")).json()
                tasks = await ls.tasks(team_p.project or 0)
                yield Scenario(
                    site=site,
                    service=svc2,
                    truths=truths,
                    events=[e for e in collector.items if e.annotation_id != "marker"],
                    tasks=tasks,
                    perfect=perfect,
                    careless=careless,
                    progress=progress,
                    predictions=predictions,
                )
    finally:
        await producer.stop()
        await ls.aclose()


def _latest(events: list[AnnotationCompleted]) -> list[AnnotationCompleted]:
    superseded = {e.supersedes for e in events if e.supersedes}
    return [e for e in events if e.annotation_id not in superseded]


async def test_a_task_per_sampled_image_and_none_for_shadow_or_redelivery(
    scenario: Scenario,
) -> None:
    image_ids = [t["data"]["image_id"] for t in scenario.tasks]
    assert sorted(image_ids) == sorted(p.image_id for p in scenario.predictions)


async def test_tasks_carry_metadata_and_pre_annotations(scenario: Scenario) -> None:
    by_image = {t["data"]["image_id"]: t for t in scenario.tasks}
    # The scenario samples everything at random (random_share 1.0): the random draw comes first,
    # so even its outlier is in the random stratum, and each task says why it was sampled.
    policy = scenario.service.sync.sampler.policy
    for p in scenario.predictions:
        task = by_image[p.image_id]
        assert task["data"]["sampling_reason"] == reason_for(p, policy) == "random"
        assert (task["data"]["site"], task["data"]["camera"]) == (scenario.site, CAMERA)
        preds = task["predictions"][0]["result"]
        assert len(preds) == len(p.boxes)


async def test_image_link_serves_the_png_for_its_site_only(scenario: Scenario) -> None:
    task = scenario.tasks[0]
    url = task["data"]["image"]
    async with httpx.AsyncClient() as http:
        ok = await http.get(url)
        q = parse_qs(urlparse(url).query)
        other = url.replace(f"site={q['site'][0]}", "site=OTHER")
        forged = url.replace(q["sig"][0], "0" * 64)
        refused = [(await http.get(other)).status_code, (await http.get(forged)).status_code]
    assert ok.status_code == 200
    assert ok.headers["content-type"] == "image/png"
    assert ok.content.startswith(b"\x89PNG")
    assert refused == [403, 403]


async def test_perfect_annotator_boxes_are_within_one_pixel_of_truth(scenario: Scenario) -> None:
    perfect = [
        e
        for e in _latest(scenario.events)
        if e.annotator == scenario.perfect.email and e.status == AnnotationStatus.COMPLETED
    ]
    assert len(perfect) == N_IMAGES - 1
    for e in perfect:
        truth = sorted(scenario.truths[e.image_id].boxes, key=lambda b: (b.label, b.x, b.y))
        got = sorted(e.boxes, key=lambda b: (b.label, b.x, b.y))
        assert [b.label for b in got] == [b.label for b in truth]
        for g, t in zip(got, truth, strict=True):
            assert abs(g.x - t.x) <= 1
            assert abs(g.y - t.y) <= 1
            assert abs(g.w - t.w) <= 1
            assert abs(g.h - t.h) <= 1


async def test_unreadable_image_comes_back_as_a_skip_with_reason(scenario: Scenario) -> None:
    blurry = scenario.predictions[-1].image_id
    skips = [e for e in scenario.events if e.status == AnnotationStatus.SKIPPED]
    assert [(e.image_id, e.annotator, e.skip_reason) for e in skips] == [
        (blurry, scenario.perfect.email, "blurry")
    ]
    assert skips[0].boxes == ()


async def test_nothing_is_emitted_twice(scenario: Scenario) -> None:
    ids = [e.annotation_id for e in scenario.events]
    assert len(ids) == len(set(ids))
    ls_annotations = sum(len(t["annotations"]) for t in scenario.tasks)
    assert len(scenario.events) == ls_annotations + 1  # plus the one update


async def test_an_update_supersedes_the_first_version(scenario: Scenario) -> None:
    updates = [e for e in scenario.events if e.supersedes]
    assert len(updates) == 1
    first = next(e for e in scenario.events if e.annotation_id == updates[0].supersedes)
    assert first.image_id == updates[0].image_id
    assert first.annotation_id.split("-")[1] == updates[0].annotation_id.split("-")[1]


async def test_progress_counts_match_the_annotations(scenario: Scenario) -> None:
    latest = _latest(scenario.events)
    expected: Counter[tuple[str, str, str]] = Counter(
        (e.annotator, e.occurred_at.date().isoformat(), e.status.value) for e in latest
    )
    got = {
        (r["annotator"], r["day"], s): r[k]
        for r in scenario.progress["by_annotator_day"]
        for s, k in (("completed", "annotated"), ("skipped", "skipped"))
        if r[k]
    }
    assert got == dict(expected)
    campaign = scenario.progress["campaign"]
    annotated = {e.image_id for e in latest if e.status == AnnotationStatus.COMPLETED}
    assert campaign["annotated_images"] == len(annotated)
    assert campaign["sampled"] == N_IMAGES


async def test_agreement_matches_an_independent_computation(scenario: Scenario) -> None:
    latest = _latest(scenario.events)
    by = {(e.image_id, e.annotator): e for e in latest if e.status == AnnotationStatus.COMPLETED}
    a, b = sorted([scenario.perfect.email, scenario.careless.email])
    images = sorted({i for i, _ in by if (i, a) in by and (i, b) in by})
    da = [bool(by[(i, a)].boxes) for i in images]
    db = [bool(by[(i, b)].boxes) for i in images]
    ag = scenario.progress["agreement"]
    assert ag["pairs"] == len(images) == N_IMAGES - 1
    expected_kappa = cohen_kappa_score(da, db)
    assert ag["kappa"] == pytest.approx(expected_kappa)
    matched, iou_sum, total = 0, 0.0, 0
    for i in images:
        x, y = list(by[(i, a)].boxes), list(by[(i, b)].boxes)
        total += len(x) + len(y)
        m, s = _exhaustive(x, y)
        matched += m
        iou_sum += s
    assert ag["box_matched_share"] == pytest.approx(2 * matched / total)
    assert ag["box_mean_iou"] == pytest.approx(iou_sum / matched)


def _exhaustive(a: list[Box], b: list[Box]) -> tuple[int, float]:
    if len(a) > len(b):
        a, b = b, a
    best = (0, 0.0)
    for perm in itertools.permutations(range(len(b)), len(a)):
        vals = [
            (v if (v := iou(a[i], b[j])) >= 0.5 and a[i].label == b[j].label else 0.0)
            for i, j in enumerate(perm)
        ]
        best = max(best, (sum(v > 0 for v in vals), sum(vals)))
    return best


_ = json  # (kept for debugging dumps of the progress document)
