"""Closing a retraining job: gates on the frozen eval sets, shadow, promotion on the scorecard.

Gating runs tiny ONNX bundles (``defectloop.testing.bundles``: constant heads, so a bundle either
flags every image or none) on tiny frozen eval sets written through the real snapshot code and
blob store. Promotion asks a stub of the monitor's HTTP contract served on 127.0.0.1. The unit
tests record what governance would publish; the integration test runs the whole trainer service
on the real broker: a gated candidate is published as shadow, then promoted under the auto policy.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlmodel import select

from defectloop.common import topics
from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.db import make_engine
from defectloop.common.events import ModelDeployed, ModelRole, sha256_hex
from defectloop.testing.bundles import LABELS, BundleBuilder
from defectloop.testing.http import serve
from defectloop.testing.kafka import read_to_end
from defectloop.testing.net import free_port, wait_until
from defectloop.trainer.audit import AuditAction
from defectloop.trainer.deploy import register_bundle
from defectloop.trainer.gates import GateConfig
from defectloop.trainer.gating import Gatekeeper
from defectloop.trainer.governance import AUTO_APPROVER, Governance, PromotionPolicy
from defectloop.trainer.jobs import Job, JobState, JobStore, RetrainPolicy
from defectloop.trainer.main import build_app
from defectloop.trainer.promotion import Promoter, ScorecardClient
from defectloop.trainer.registry import ModelVersion, Registry
from defectloop.trainer.settings import TrainerSettings
from defectloop.trainer.snapshot import (
    ManifestBox,
    ManifestItem,
    SnapshotManifest,
    materialise,
    store_manifest,
)

SITE = "B"
CHANGE = datetime.now(UTC) - timedelta(hours=2)
BOX = (0, 0.9, 18.0, 22.0, 10.0, 6.0)  # always flags the image (score 0.9 > decision threshold)
PARITY = {"heatmap": 2e-6, "size": 1e-6, "offset": 1e-6, "embedding": 3e-6}
# Tiny graphs run in a fraction of a millisecond, so decoding the one that finds boxes costs it
# 2-3x the one that finds none, and a busy shared machine moves such timings a lot: the latency
# margin is opened here (its rule is tested in test_trainer_gates); real bundles get 10 %.
TINY_GATES = GateConfig(latency_margin=50.0, n_resamples=500)


class Sent:
    """A publisher that records the deployment events governance asks it to send."""

    def __init__(self) -> None:
        self.events: list[ModelDeployed] = []

    def __call__(self, events: Sequence[ModelDeployed]) -> None:
        self.events.extend(events)


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64), dtype=np.uint8)
    ok, data = cv2.imencode(".png", pixels)
    assert ok
    return bytes(data.tobytes())


def eval_item(blobs: LocalBlobStore, site: str, n: int, origin: str) -> ManifestItem:
    png = _png(hash((site, n, origin)) % 2**32)
    return ManifestItem(
        image_id=f"{site}-{origin}-{n}",
        site_id=site,
        sha256=sha256_hex(png),
        blob_uri=blobs.put(png, suffix=".png"),
        width=64,
        height=64,
        annotation_id=f"ann-{site}-{origin}-{n}",
        boxes=(ManifestBox(label="scratch", x=13.0, y=19.0, w=10.0, h=6.0),),
        split="eval",
        origin="fresh" if origin == "fresh" else "replay",
    )


@dataclass
class World:
    """A registry with a champion at SITE, a registered candidate, and a job in gating."""

    tmp: Path
    registry: Registry
    store: JobStore
    blobs: LocalBlobStore
    governance: Governance
    sent: Sent
    champion: str
    candidate: str
    job: Job
    extra: dict[str, Any] = field(default_factory=dict)

    def gatekeeper(self) -> Gatekeeper:
        return Gatekeeper(
            self.store, self.blobs, self.governance, work_dir=self.tmp / "work", config=TINY_GATES
        )

    def audit(self, version: str) -> list[str]:
        return [r.action for r in self.governance.history(version=version)]


def make_world(
    tmp: Path,
    *,
    candidate_finds: bool,
    policy: str = "approval",
    site: str = SITE,
    publish: Any = None,
    db_url: str | None = None,
) -> World:
    """Champion and candidate: one flags every image, the other none (``candidate_finds``)."""
    url = db_url or f"sqlite:///{tmp / 'trainer.db'}"
    registry = Registry(url)
    store = JobStore(make_engine(url, create_tables=False))
    blobs = LocalBlobStore(tmp / "blobs")
    sent = Sent()
    governance = Governance(
        registry,
        publish=publish or sent,
        policy=PromotionPolicy(sites={site: policy}),
    )
    build = BundleBuilder(tmp)
    tag = uuid.uuid4().hex[:6]
    champ_v, cand_v = f"champ-{site}-{tag}", f"retrain-{site}-{tag}-a1"
    champ_b = build(champ_v, boxes=[] if candidate_finds else [BOX])
    cand_b = build(cand_v, boxes=[BOX] if candidate_finds else [])
    champion = register_bundle(registry, champ_b.path, site=site, author="alice")
    register_bundle(registry, cand_b.path, site=site, author="trainer-bot")
    with registry.session() as s:  # the training run's record carries its parity check
        row = s.get(ModelVersion, cand_v)
        assert row is not None
        row.metrics_json = json.dumps(
            {**row.metrics, **{f"parity/{k}": v for k, v in PARITY.items()}}
        )
        s.add(row)
        s.commit()
    governance.activate(
        champion, site, ModelRole.CHAMPION, by="ops", approved_by="carol", reason="baseline"
    )
    items = (
        *(eval_item(blobs, site, i, "fresh") for i in range(8)),
        *(eval_item(blobs, site, i, "before") for i in range(4)),
        *(eval_item(blobs, f"{site}x", i, "before") for i in range(6)),
    )
    manifest = SnapshotManifest(
        site_id=site,
        job_id="job",
        change_point_at=CHANGE,
        labels=LABELS,
        replay_share=0.5,
        seed=0,
        items=items,
    )
    digest = store_manifest(manifest, blobs)
    job_id = f"job-{tag}"
    materialise(manifest, blobs, tmp / "work" / job_id / "a1" / "dataset")
    with store.session() as s:
        s.add(
            Job(
                job_id=job_id,
                site_id=site,
                state=JobState.GATING.value,
                kind="performance",
                change_point_at=CHANGE,
                deadline_at=CHANGE + timedelta(hours=4),
                model_version=champ_v,
                snapshot_sha256=digest,
                candidate_version=cand_v,
            )
        )
        s.commit()
    return World(tmp, registry, store, blobs, governance, sent, champ_v, cand_v, store.get(job_id))


# --- gating -------------------------------------------------------------------------------------


@pytest.mark.unit
async def test_a_candidate_that_passes_its_gates_goes_out_as_shadow(tmp_path: Path) -> None:
    w = make_world(tmp_path, candidate_finds=True)
    sent_before = len(w.sent.events)

    await w.gatekeeper()(w.job)

    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.SHADOW, job.reason
    gate = w.governance.latest_gate(w.candidate)
    assert gate is not None
    assert gate.passed
    report = gate.report
    assert (report.champion_version, report.degraded_site) == (w.champion, SITE)
    # The degraded site's post-change images only; its pre-drift set and the other site apart.
    assert report.improvement.n_images == 8
    assert (report.improvement.champion_recall, report.improvement.candidate_recall) == (0.0, 1.0)
    assert sorted(r.site for r in report.non_inferiority) == [f"{SITE}/pre-drift", f"{SITE}x"]
    assert {r.site: r.n_images for r in report.non_inferiority} == {
        f"{SITE}/pre-drift": 4,
        f"{SITE}x": 6,
    }
    # The other site runs no version of this champion: scored, not binding; the pre-drift set is.
    assert {r.site: r.binding for r in report.non_inferiority} == {
        f"{SITE}/pre-drift": True,
        f"{SITE}x": False,
    }
    assert report.parity.max_abs_diff == PARITY
    assert report.latency.champion_ms > 0
    assert report.latency.candidate_ms > 0
    [shadow] = w.sent.events[sent_before:]
    assert (shadow.model_version, shadow.role, shadow.active) == (
        w.candidate,
        ModelRole.SHADOW,
        True,
    )
    assert shadow.approved_by is None
    assert w.audit(w.candidate)[-2:] == [AuditAction.GATE_PASSED, AuditAction.SHADOW]
    assert job.detail["gate"]["degraded"]["candidate_recall"] == 1.0
    champion = w.governance.champion(SITE)
    assert champion is not None
    assert champion.model_version == w.champion


@pytest.mark.unit
async def test_a_site_the_champions_version_also_serves_binds_the_gate(tmp_path: Path) -> None:
    w = make_world(tmp_path, candidate_finds=True)
    shared = w.registry.get_model(w.champion)
    w.governance.activate(
        shared, f"{SITE}x", ModelRole.CHAMPION, by="ops", approved_by="carol", reason="shared"
    )

    await w.gatekeeper()(w.job)

    gate = w.governance.latest_gate(w.candidate)
    assert gate is not None
    assert {r.site: r.binding for r in gate.report.non_inferiority} == {
        f"{SITE}/pre-drift": True,
        f"{SITE}x": True,
    }


@pytest.mark.unit
async def test_a_failed_gate_deploys_nothing_and_records_why(tmp_path: Path) -> None:
    w = make_world(tmp_path, candidate_finds=False)
    sent_before = len(w.sent.events)

    await w.gatekeeper()(w.job)

    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.GATE_FAILED
    assert "nothing deployed" in job.reason
    assert "not better" in job.reason
    assert w.sent.events[sent_before:] == []
    gate = w.governance.latest_gate(w.candidate)
    assert gate is not None
    assert not gate.passed
    assert gate.report.improvement.candidate_only_hits == 0
    assert gate.report.improvement.champion_only_hits == 8
    [failed] = [r for r in w.governance.history(version=w.candidate) if r.action == "gate_failed"]
    assert "not better" in failed.reason
    assert failed.evidence["improvement"]["champion_recall"] == 1.0
    assert w.audit(w.candidate)[-1] == AuditAction.GATE_FAILED
    assert job.detail["gate"]["passed"] is False


@pytest.mark.unit
async def test_gating_resumed_after_a_crash_neither_regates_nor_redeploys(tmp_path: Path) -> None:
    w = make_world(tmp_path, candidate_finds=True)
    keeper = w.gatekeeper()
    # A trainer killed after shadowing but before recording the job: the registry knows better.
    report = keeper.gate  # the same blocking step, run by hand up to the shadow
    await asyncio.to_thread(report, w.job)
    gates = len(w.governance.history(version=w.candidate))
    sent = len(w.sent.events)
    with w.store.session() as s:
        row = s.get(Job, w.job.job_id)
        assert row is not None
        row.state = JobState.GATING.value  # the state the killed process last committed
        s.add(row)
        s.commit()

    await keeper(w.store.get(w.job.job_id))

    assert w.store.get(w.job.job_id).job_state == JobState.SHADOW
    assert len(w.governance.history(version=w.candidate)) == gates
    assert len(w.sent.events) == sent


# --- promotion against a stub of the monitor's HTTP contract ------------------------------------


class MonitorStub:
    """``GET /v1/sites/{site}/scorecards`` as the monitor answers it; cards set by the test."""

    def __init__(self) -> None:
        self.cards: dict[str, list[dict[str, Any]]] = {}
        self.requests = 0
        self.app = FastAPI()

        @self.app.get("/v1/sites/{site_id}/scorecards")
        def scorecards(site_id: str) -> Any:
            self.requests += 1
            if site_id not in self.cards:
                return JSONResponse({"error": f"unknown site {site_id}"}, status_code=404)
            return {"site_id": site_id, "stratum": "random", "scorecards": self.cards[site_id]}

    def verdict(self, site: str, champion: str, candidate: str, verdict: str, n: int = 40) -> None:
        self.cards[site] = [
            {
                "role": "shadow",
                "champion_version": champion,
                "candidate_version": candidate,
                "n_pairs": n,
                "n_positive": n // 2,
                "mcnemar_p": 0.001 if verdict == "better" else 0.5,
                "verdict": verdict,
            }
        ]


def served(app: FastAPI) -> AbstractAsyncContextManager[str]:
    return serve(app)


async def shadowed(tmp_path: Path, policy: str) -> World:
    w = make_world(tmp_path, candidate_finds=True, policy=policy)
    await w.gatekeeper()(w.job)
    w.job = w.store.get(w.job.job_id)
    assert w.job.job_state == JobState.SHADOW
    return w


def promoter(w: World, url: str, **policy: Any) -> Promoter:
    return Promoter(
        w.store,
        w.governance,
        ScorecardClient(url),
        lambda _site: RetrainPolicy(**policy),
        poll_s=1e-9,
    )


@pytest.mark.unit
async def test_auto_policy_promotes_on_a_better_scorecard_and_not_before(tmp_path: Path) -> None:
    w = await shadowed(tmp_path, "auto")
    monitor = MonitorStub()
    async with served(monitor.app) as url:
        promote = promoter(w, url)
        await promote(w.job)  # the monitor has not seen the site yet (404)
        assert w.store.get(w.job.job_id).job_state == JobState.SHADOW
        monitor.verdict(SITE, w.champion, w.candidate, "not_enough_data", n=12)
        await promote(w.store.get(w.job.job_id))
        waiting = w.store.get(w.job.job_id)
        assert waiting.job_state == JobState.SHADOW
        assert "not_enough_data on 12" in waiting.reason
        sent = len(w.sent.events)

        monitor.verdict(SITE, w.champion, w.candidate, "better")
        await promote(waiting)

    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.DEPLOYED, job.reason
    assert job.detail["scorecard"]["verdict"] == "better"
    champion = w.governance.champion(SITE)
    assert champion is not None
    assert champion.model_version == w.candidate
    events = w.sent.events[sent:]
    assert [(e.model_version, e.role, e.active) for e in events] == [
        (w.candidate, ModelRole.CHAMPION, True),
        (w.candidate, ModelRole.SHADOW, False),
    ]
    assert events[0].approved_by == AUTO_APPROVER
    assert w.governance.rollback_target(SITE).model_version == w.champion  # type: ignore[union-attr]
    assert monitor.requests == 3
    # Closed: a later look (e.g. a restarted trainer) changes nothing and deploys nothing.
    await promote(job)
    assert len(w.sent.events) == sent + 2


@pytest.mark.unit
async def test_approval_policy_waits_for_an_approver_then_closes_on_the_promotion(
    tmp_path: Path,
) -> None:
    w = await shadowed(tmp_path, "approval")
    monitor = MonitorStub()
    monitor.verdict(SITE, w.champion, w.candidate, "better")
    async with served(monitor.app) as url:
        promote = promoter(w, url)
        await promote(w.job)
        job = w.store.get(w.job.job_id)
        assert job.job_state == JobState.AWAITING_APPROVAL
        assert f"defectloop models approve {w.candidate}" in job.reason
        sent = len(w.sent.events)
        await promote(job)  # still waiting: nothing is deployed by the trainer
        assert w.store.get(w.job.job_id).job_state == JobState.AWAITING_APPROVAL
        assert len(w.sent.events) == sent

        # What `defectloop models approve --as dave` and `models promote` do.
        w.governance.approve(w.candidate, "dave")
        w.governance.promote(w.candidate, by="dave")
        await promote(job)

    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.DEPLOYED
    assert len([e for e in w.sent.events[sent:] if e.role == ModelRole.CHAMPION]) == 1
    assert w.sent.events[sent].approved_by == "dave"


@pytest.mark.unit
async def test_a_worse_shadow_is_retired_with_the_scorecard_as_evidence(tmp_path: Path) -> None:
    w = await shadowed(tmp_path, "auto")
    monitor = MonitorStub()
    monitor.verdict(SITE, w.champion, w.candidate, "worse")
    async with served(monitor.app) as url:
        await promoter(w, url)(w.job)

    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.REJECTED
    assert "worse" in job.reason
    retired = w.sent.events[-1]
    assert (retired.model_version, retired.role, retired.active) == (
        w.candidate,
        ModelRole.SHADOW,
        False,
    )
    [record] = [r for r in w.governance.history(version=w.candidate) if r.action == "retired"]
    assert record.evidence["verdict"] == "worse"
    assert record.evidence["n_pairs"] == 40
    champion = w.governance.champion(SITE)
    assert champion is not None
    assert champion.model_version == w.champion


@pytest.mark.unit
async def test_a_monitor_that_is_down_means_try_later(tmp_path: Path) -> None:
    w = await shadowed(tmp_path, "auto")
    sent = len(w.sent.events)
    await promoter(w, f"http://127.0.0.1:{free_port()}")(w.job)
    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.SHADOW
    assert len(w.sent.events) == sent


@pytest.mark.unit
async def test_a_shadow_without_a_verdict_is_given_up_after_its_period(tmp_path: Path) -> None:
    w = await shadowed(tmp_path, "auto")
    monitor = MonitorStub()
    monitor.verdict(SITE, w.champion, w.candidate, "not_enough_data")
    async with served(monitor.app) as url:
        await promoter(w, url, shadow_period_s=1e-6)(w.job)
    job = w.store.get(w.job.job_id)
    assert job.job_state == JobState.REJECTED
    assert "shadow period" in job.reason
    assert monitor.requests == 0  # past the period, the verdict no longer matters
    assert w.sent.events[-1].active is False


@pytest.mark.unit
async def test_a_candidate_already_champion_closes_without_a_second_deployment(
    tmp_path: Path,
) -> None:
    w = await shadowed(tmp_path, "auto")
    w.governance.promote(w.candidate, by="trainer")  # a killed trainer got this far
    sent = len(w.sent.events)
    monitor = MonitorStub()
    monitor.verdict(SITE, w.champion, w.candidate, "better")
    async with served(monitor.app) as url:
        await promoter(w, url)(w.job)
    assert w.store.get(w.job.job_id).job_state == JobState.DEPLOYED
    assert len(w.sent.events) == sent
    with w.registry.session() as s:
        from defectloop.trainer.registry import Deployment

        champions = s.exec(
            select(Deployment).where(
                Deployment.site == SITE,
                Deployment.role == "champion",
                Deployment.model_version == w.candidate,
            )
        ).all()
    assert len(champions) == 1


# --- the service on the real broker ------------------------------------------------------------


async def site_events(bootstrap: str, site: str) -> list[tuple[str, ModelRole, bool, str | None]]:
    events = await read_to_end(
        bootstrap, topics.MODEL_DEPLOYED, model=ModelDeployed, where=lambda e: e.site_id == site
    )
    return [(e.model_version, e.role, e.active, e.approved_by) for e in events]


@pytest.mark.integration
async def test_the_service_shadows_a_gated_candidate_then_promotes_it_under_auto_policy(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from defectloop.common.kafka import build_broker
    from defectloop.trainer.governance import kafka_publisher

    site = "r" + uuid.uuid4().hex[:10]
    db_url = f"sqlite:///{tmp_path / 'trainer.db'}"
    # The champion is deployed through Kafka, as the job's world would have it.
    w = await asyncio.to_thread(  # governance publishes synchronously (its own event loop)
        make_world,
        tmp_path,
        candidate_finds=True,
        policy="auto",
        site=site,
        publish=kafka_publisher(kafka_bootstrap),
        db_url=db_url,
    )
    monitor = MonitorStub()
    async with served(monitor.app) as url:
        settings = TrainerSettings(
            kafka_bootstrap=kafka_bootstrap,
            port=free_port(),
            database_url=db_url,
            blob_url=(tmp_path / "blobs").as_uri(),
            work_dir=tmp_path / "work",
            only_sites=[site],
            job_tick_s=0.2,
            promotion_policy={site: "auto"},
            gate=TINY_GATES,
            monitor_url=url,
            scorecard_poll_s=0.2,
            log_format="console",
        )
        app = build_app(
            settings,
            broker=build_broker(kafka_bootstrap, client_id="trainer-rollout-test"),
            group_id=f"trainer-{site}",
        )
        store: JobStore = app.state.retrainer.store

        async def job_in(state: JobState) -> Job | None:
            job = store.get(w.job.job_id)
            return job if job.job_state == state else None

        async with app.router.lifespan_context(app):
            await wait_until(lambda: job_in(JobState.SHADOW), timeout_s=180, what="the shadow")
            published = await site_events(kafka_bootstrap, site)
            assert (w.candidate, ModelRole.SHADOW, True, None) in published
            assert published[-1][:2] != (w.candidate, ModelRole.CHAMPION)  # not before a verdict
            monitor.verdict(site, w.champion, w.candidate, "better")
            deployed = await wait_until(
                lambda: job_in(JobState.DEPLOYED), timeout_s=180, what="the promotion"
            )

            async def followed() -> bool:  # the trainer's own model.deployed table caught up
                row = store.champion(site)
                return row is not None and row.model_version == w.candidate

            await wait_until(followed, timeout_s=180, what="model.deployed to be followed")

    assert "policy:auto" in deployed.reason
    # Per key (site/role) the order is the partition's; compaction keeps at least the last.
    by_key: dict[ModelRole, list[tuple[str, ModelRole, bool, str | None]]] = {}
    for event in await site_events(kafka_bootstrap, site):
        by_key.setdefault(event[1], []).append(event)
    assert by_key[ModelRole.CHAMPION][-1] == (w.candidate, ModelRole.CHAMPION, True, AUTO_APPROVER)
    assert by_key[ModelRole.SHADOW][-1] == (w.candidate, ModelRole.SHADOW, False, None)
    assert len([e for e in by_key[ModelRole.CHAMPION] if e[0] == w.candidate]) == 1
    verdict = await asyncio.to_thread(w.governance.verify_audit)
    assert verdict.intact
    assert [a for a in w.audit(w.candidate) if a != "registered"] == [
        AuditAction.GATE_PASSED,
        AuditAction.SHADOW,
        AuditAction.PROMOTED,
        AuditAction.RETIRED,  # its shadow slot
    ]


@pytest.mark.unit
async def test_a_refused_promotion_keeps_the_shadow_and_deploys_nothing(tmp_path: Path) -> None:
    w = await shadowed(tmp_path, "auto")
    gate = w.governance.latest_gate(w.candidate)
    assert gate is not None
    # Re-gated meanwhile (e.g. by ops) and failed: governance refuses the promotion.
    failed = gate.report.model_copy(update={"passed": False, "reasons": ["re-gated: worse on C"]})
    w.governance.record_gate(failed, by="ops")
    sent = len(w.sent.events)
    monitor = MonitorStub()
    monitor.verdict(SITE, w.champion, w.candidate, "better")
    async with served(monitor.app) as url:
        await promoter(w, url)(w.job)
    assert w.store.get(w.job.job_id).job_state == JobState.SHADOW
    assert len(w.sent.events) == sent
    champion = w.governance.champion(SITE)
    assert champion is not None
    assert champion.model_version == w.champion
