"""Gating a trained candidate: score it and the champion on the same frozen images, then decide.

The ``on_trained`` hook of the retraining loop (:class:`Gatekeeper`). For a job in ``gating``:

1. The frozen evaluation sets of its snapshot (``eval/<site>/``, rebuilt from the blob store by
   the manifest's digest when the job's work directory is gone): the degraded site's images
   captured since the change point, each other site's set, and the degraded site's own
   **pre-drift** set (its eval images from before the change point, named ``<site>/pre-drift``)
   when the snapshot has one.
2. Both bundles run through ``defectloop.vision``'s ONNX ``Detector`` exactly as deployed (no
   torch): image-level decisions against the labels' truth, mAP50 on the degraded set, and the
   per-image latency of both on the same batch (alternated, best of several rounds, so one busy
   moment on a shared machine does not decide).
3. ONNX/torch parity comes from the training run's record (``parity/<output>`` metrics).
4. :func:`defectloop.trainer.gates.evaluate_gates`, stored with ``Governance.record_gate``
   (audited ``gate_passed`` / ``gate_failed``). Failed: the job ends ``gate_failed`` with the
   reasons, nothing is deployed. Passed: ``Governance.shadow`` (``model.deployed`` role shadow on
   100 % of the site's traffic) and the job moves to ``shadow``.

Scoring is blocking (ONNX Runtime, PNG decoding) and runs in a worker thread. Every step first
looks at what the registry already holds (a gate report of this candidate, an active shadow), so a
trainer killed half-way resumes without a second report or a second deployment.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import DefectloopError, NotFoundError, TransientError
from defectloop.common.events import ModelRole
from defectloop.common.logging import get_logger
from defectloop.common.metrics import GATE_OUTCOMES
from defectloop.trainer.gates import GateConfig, GateReport, Latency, SiteEval, evaluate_gates
from defectloop.trainer.governance import GateEvidence, Governance
from defectloop.trainer.jobs import Job, JobState, JobStore
from defectloop.trainer.snapshot import EVAL_DIR, SnapshotManifest, load_manifest, materialise
from defectloop.vision.coco import CocoDataset, CocoFile, load_coco_dataset
from defectloop.vision.evaluate import evaluate_detector
from defectloop.vision.runtime import Detector

log = get_logger(__name__)

PARITY_PREFIX = "parity/"
PRE_DRIFT = "pre-drift"
LATENCY_BATCH = 16
LATENCY_ROUNDS = 5


@dataclass(frozen=True)
class EvalSet:
    """One frozen evaluation set, as a COCO dataset both models are run over."""

    name: str
    dataset: CocoDataset


def _subset(dataset: CocoDataset, image_ids: set[str]) -> CocoDataset:
    """The images of ``dataset`` whose file is ``<image_id>.png`` for an id in ``image_ids``."""
    images = [i for i in dataset.images if Path(i.file_name).stem in image_ids]
    kept = {i.id for i in images}
    return CocoDataset(
        dataset.root,
        CocoFile(
            images=images,
            annotations=[a for a in dataset.annotations if a.image_id in kept],
            categories=dataset.categories,
        ),
    )


def eval_sets(eval_root: Path, manifest: SnapshotManifest) -> tuple[EvalSet | None, list[EvalSet]]:
    """(the degraded site's post-change set, the others incl. its pre-drift set) of a snapshot.

    In the manifest an eval image of the retrained site is ``fresh`` when it was captured since
    the change point and ``replay`` before it: the latter is the site's pre-drift set.
    """
    site = manifest.site_id
    evals = [i for i in manifest.items if i.split == "eval"]
    degraded: EvalSet | None = None
    others: list[EvalSet] = []
    for name in sorted({i.site_id for i in evals}):
        dataset = load_coco_dataset(eval_root / name)
        if name != site:
            others.append(EvalSet(name, dataset))
            continue
        fresh = {i.image_id for i in evals if i.site_id == site and i.origin == "fresh"}
        before = {i.image_id for i in evals if i.site_id == site and i.origin == "replay"}
        if fresh:
            degraded = EvalSet(site, _subset(dataset, fresh))
        if before:
            others.append(EvalSet(f"{site}/{PRE_DRIFT}", _subset(dataset, before)))
    return degraded, others


def decisions(detector: Detector, dataset: CocoDataset, *, batch_size: int = 16) -> list[bool]:
    """The detector's image-level defective decision for each image, in dataset order."""
    out: list[bool] = []
    for start in range(0, len(dataset.images), batch_size):
        chunk = dataset.images[start : start + batch_size]
        out.extend(p.defective for p in detector.predict([dataset.read_image(i) for i in chunk]))
    return out


def truth(dataset: CocoDataset) -> list[bool]:
    """Ground truth per image: it has at least one labelled box."""
    return [bool(dataset.annotations_of(i.id)) for i in dataset.images]


def paired_eval(
    name: str, champion: Detector, candidate: Detector, dataset: CocoDataset, *, with_map: bool
) -> SiteEval:
    """Both models on the same images; mAP50 of both too when ``with_map``."""
    maps: dict[str, float | None] = {"champion_map50": None, "candidate_map50": None}
    if with_map:
        maps = {
            "champion_map50": evaluate_detector(champion, dataset).map50,
            "candidate_map50": evaluate_detector(candidate, dataset).map50,
        }
    return SiteEval(
        site=name,
        truth=truth(dataset),
        champion=decisions(champion, dataset),
        candidate=decisions(candidate, dataset),
        **maps,
    )


def measure_latency(
    champion: Detector,
    candidate: Detector,
    images: Sequence[npt.NDArray[np.uint8]],
    *,
    rounds: int = LATENCY_ROUNDS,
) -> Latency:
    """Per-image milliseconds of both models on the same batch: alternated, best round each.

    The best round is the machine's capability; a median or mean would charge one model for
    whatever else ran on a shared machine during its turn.
    """
    batch = list(images)
    best = {"champion": float("inf"), "candidate": float("inf")}
    for detector in (champion, candidate):  # warm-up: session allocations are not latency
        detector.predict(batch)
    for _ in range(rounds):
        for name, detector in (("champion", champion), ("candidate", candidate)):
            started = time.perf_counter()
            detector.predict(batch)
            best[name] = min(best[name], (time.perf_counter() - started) * 1000 / len(batch))
    return Latency(champion_ms=best["champion"], candidate_ms=best["candidate"])


def parity_of(metrics: dict[str, float]) -> dict[str, float]:
    """The ONNX/torch max |difference| per output recorded by the training run."""
    return {
        k.removeprefix(PARITY_PREFIX): v for k, v in metrics.items() if k.startswith(PARITY_PREFIX)
    }


def score_candidate(
    *,
    candidate_version: str,
    candidate_bundle: Path,
    champion_version: str,
    champion_bundle: Path,
    eval_root: Path,
    manifest: SnapshotManifest,
    parity: dict[str, float],
    config: GateConfig,
    served_sites: Collection[str] = (),
) -> GateReport | str:
    """The gate report of the candidate against the champion, or why none can be computed.

    ``served_sites``: the other sites the champion's version serves; with the degraded site's
    pre-drift set they are the binding non-inferiority sets (:mod:`defectloop.trainer.gates`).
    """
    degraded, others = eval_sets(eval_root, manifest)
    if degraded is None or not degraded.dataset.images:
        return (
            f"the snapshot has no frozen eval image of site {manifest.site_id} captured since "
            "the change point: the candidate cannot be shown better"
        )
    champion = Detector.from_bundle(champion_bundle)
    candidate = Detector.from_bundle(candidate_bundle)
    first = degraded.dataset.images[:LATENCY_BATCH]
    latency = measure_latency(champion, candidate, [degraded.dataset.read_image(i) for i in first])
    return evaluate_gates(
        candidate_version=candidate_version,
        champion_version=champion_version,
        degraded=paired_eval(degraded.name, champion, candidate, degraded.dataset, with_map=True),
        others=[
            paired_eval(s.name, champion, candidate, s.dataset, with_map=False).model_copy(
                update={
                    "binding": s.name.startswith(f"{manifest.site_id}/") or s.name in served_sites
                }
            )
            for s in others
            if s.dataset.images
        ],
        parity=parity,
        latency=latency,
        config=config,
    )


def count_gates(site_id: str, report: GateReport) -> None:
    """Each gate's verdict (and the overall one, gate ``all``) on the gate-outcome counter."""
    verdicts = [
        ("all", report.passed),
        ("improvement", report.improvement.passed),
        ("parity", report.parity.passed),
        ("latency", report.latency.passed),
        *(("non_inferiority", r.passed) for r in report.non_inferiority if r.binding),
    ]
    for gate, passed in verdicts:
        GATE_OUTCOMES.labels(site_id, gate, str(passed).lower()).inc()


def _report_summary(report: GateReport) -> dict[str, object]:
    """The numbers ops reads on the job (the full report is on the version and in the audit)."""
    imp = report.improvement
    return {
        "passed": report.passed,
        "champion_version": report.champion_version,
        "degraded": {
            "site": imp.site,
            "n_images": imp.n_images,
            "n_defective": imp.n_defective,
            "champion_recall": imp.champion_recall,
            "candidate_recall": imp.candidate_recall,
            "champion_precision": imp.champion_precision,
            "candidate_precision": imp.candidate_precision,
            "only_candidate_right": imp.candidate_only_correct,
            "only_champion_right": imp.champion_only_correct,
            "mcnemar_p": imp.p_value,
            "recall_worse_p": imp.recall_worse_p,
            "champion_map50": imp.champion_map50,
            "candidate_map50": imp.candidate_map50,
        },
        "others": {
            r.site: {
                "delta_recall": r.delta_recall,
                "delta_precision": r.delta_precision,
                "recall_lower_holm": r.recall_lower_holm,
                "precision_lower_holm": r.precision_lower_holm,
                "passed": r.passed,
                "binding": r.binding,
            }
            for r in report.non_inferiority
        },
        "latency_ms": {
            "champion": report.latency.champion_ms,
            "candidate": report.latency.candidate_ms,
        },
        "parity": report.parity.max_abs_diff,
        "reasons": report.reasons,
    }


class Gatekeeper:
    """The ``on_trained`` hook: gates a trained job's candidate, then shadows it or stops it."""

    def __init__(
        self,
        store: JobStore,
        blobs: BlobStore,
        governance: Governance,
        *,
        work_dir: Path,
        config: GateConfig | None = None,
        actor: str = "trainer",
    ) -> None:
        self.store = store
        self.blobs = blobs
        self.governance = governance
        self.work_dir = work_dir
        self.config = config or GateConfig()
        self.actor = actor

    async def __call__(self, job: Job) -> None:
        if job.job_state != JobState.GATING:
            return
        try:
            await asyncio.to_thread(self.gate, job)
        except TransientError:
            raise  # Kafka or the database is away for a moment: the next tick tries again
        except DefectloopError as exc:
            log.error("gating_failed", job_id=job.job_id, reason=exc.reason, error=str(exc))
            await asyncio.to_thread(
                self.store.update, job.job_id, to=JobState.FAILED, reason=f"{exc.reason}: {exc}"
            )

    def gate(self, job: Job) -> Job:
        """Blocking: the whole gating step of one job (a worker thread)."""
        version = job.candidate_version
        if version is None or job.snapshot_sha256 is None:
            raise NotFoundError(f"job {job.job_id} reached gating without a candidate or snapshot")
        gov = self.governance
        model = gov.registry.get_model(version)
        site = job.site_id
        active = {
            d.role
            for d in gov.registry.deployments(site)
            if d.model_version == version and d.status == "active"
        }
        if active & {ModelRole.CHAMPION.value, ModelRole.SHADOW.value}:
            # Shadowed (or promoted by hand) before a crash: the gate is behind it.
            return self._shadowed(job, gov.latest_gate(version))
        gate = gov.latest_gate(version)
        if gate is None:
            champion = gov.champion(site)
            if champion is None:
                return self.store.update(
                    job.job_id,
                    to=JobState.GATE_FAILED,
                    reason=f"site {site} has no champion to gate {version} against; nothing "
                    "deployed (a first model is deployed by hand: defectloop models deploy)",
                )
            outcome = score_candidate(
                candidate_version=version,
                candidate_bundle=Path(model.bundle_path),
                champion_version=champion.model_version,
                champion_bundle=Path(gov.registry.get_model(champion.model_version).bundle_path),
                eval_root=self._eval_root(job),
                manifest=load_manifest(self.blobs, job.snapshot_sha256),
                parity=parity_of(model.metrics),
                config=self.config,
                served_sites={
                    d.site
                    for d in gov.registry.deployments()
                    if d.model_version == champion.model_version
                    and d.role == ModelRole.CHAMPION.value
                    and d.status == "active"
                },
            )
            if isinstance(outcome, str):
                return self.store.update(job.job_id, to=JobState.GATE_FAILED, reason=outcome)
            gate = gov.record_gate(outcome, by=self.actor)
            count_gates(job.site_id, gate.report)
            log.info(
                "gates_evaluated", job_id=job.job_id, model_version=version, passed=gate.passed
            )
        report = gate.report
        job = self.store.update(
            job.job_id,
            detail_json=json.dumps({**job.detail, "gate": _report_summary(report)}, sort_keys=True),
        )
        if not report.passed:
            return self.store.update(
                job.job_id,
                to=JobState.GATE_FAILED,
                reason="gate failed, nothing deployed: " + "; ".join(report.reasons),
            )
        gov.shadow(version, by=self.actor, reason=f"gates passed against {report.champion_version}")
        return self._shadowed(job, gate)

    def _shadowed(self, job: Job, gate: GateEvidence | None) -> Job:
        against = f" against {gate.champion_version}" if gate is not None else ""
        log.info("candidate_shadowed", job_id=job.job_id, model_version=job.candidate_version)
        return self.store.update(
            job.job_id,
            to=JobState.SHADOW,
            reason=f"gates passed{against}; {job.candidate_version} in shadow on 100 % of the "
            "site's traffic, waiting for the monitor's scorecard",
        )

    def _eval_root(self, job: Job) -> Path:
        """The job's materialised eval sets; rebuilt from the blob store when they are gone."""
        dataset = self.work_dir / job.job_id / f"a{job.attempt}" / "dataset"
        if not (dataset / EVAL_DIR).is_dir():
            assert job.snapshot_sha256 is not None
            materialise(load_manifest(self.blobs, job.snapshot_sha256), self.blobs, dataset)
        return dataset / EVAL_DIR
