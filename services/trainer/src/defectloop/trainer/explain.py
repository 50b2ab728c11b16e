"""Why did this model change? The chain behind a model version (``defectloop models why``).

PUBLIC trainer module: tools import it (lazily, inside commands), like ``defectloop.trainer.api``.
It reads what the trainer already records and never trains, so it stays free of torch:

incident -> labels -> dataset -> run -> gates -> approval -> shadow -> after promotion.

Each link comes from the trainer's own records: the retraining job whose candidate the version is
(incident numbers, fresh-label counts, dataset counts, the last shadow scorecard), the snapshot
manifest in the blob store (per-site eval sets, who labelled the fresh images), the registry
(run, parent, checkpoint digests), the gate report and the audit log. The monitor's HTTP API adds
what only it knows (annotator agreement, the live scorecard of a shadow, the metrics of a deployed
version) when it is reachable. A link that does not exist says why (``missing``) instead of
failing: a bootstrap model has no incident, a hand-trained one no job.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from defectloop.common.blobstore import BlobStore, open_blob_store
from defectloop.common.errors import DefectloopError, NotFoundError
from defectloop.common.translate import httpx_errors
from defectloop.trainer.audit import AuditAction, AuditRecord
from defectloop.trainer.checkpoints import CheckpointDigest
from defectloop.trainer.governance import GateEvidence, Governance
from defectloop.trainer.jobs import ImageRow, Job, JobStore, LabelRow, chosen_labels
from defectloop.trainer.registry import ModelVersion, Registry, RunProvenance, TrainingRun
from defectloop.trainer.snapshot import SnapshotManifest, load_manifest

__all__ = [
    "CHAIN",
    "Explanation",
    "Link",
    "MonitorReader",
    "explain",
    "explain_version",
    "job_views",
]

CHAIN = ("incident", "labels", "dataset", "run", "gates", "approval", "shadow", "after_promotion")


class Link(BaseModel):
    """One link of the chain: its facts, or why it is missing (never both empty)."""

    model_config = ConfigDict(frozen=True)

    name: str
    facts: dict[str, Any] = Field(default_factory=dict)
    missing: str | None = Field(None, description="Why this link does not exist.")
    notes: list[str] = Field(default_factory=list, description="What could not be read, and why.")


class Explanation(BaseModel):
    """The whole chain of one model version, in order (``CHAIN``)."""

    model_config = ConfigDict(frozen=True)

    version: str
    site: str | None
    author: str
    created_at: str
    job_id: str | None
    links: list[Link]

    def link(self, name: str) -> Link:
        return next(link for link in self.links if link.name == name)


class MonitorReader:
    """GETs on the monitor's API; unreachable means "not known", said once, not an error."""

    def __init__(self, base_url: str | None, *, timeout_s: float = 3.0) -> None:
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout_s = timeout_s
        self.problem: str | None = None if base_url else "no monitor URL given"

    def get(self, path: str) -> dict[str, Any] | None:
        if self.base_url is None or self.problem is not None:
            return None
        try:
            with httpx_errors(f"monitor {self.base_url}"):
                response = httpx.get(self.base_url + path, timeout=self.timeout_s)
                response.raise_for_status()
                body: dict[str, Any] = response.json()
        except NotFoundError:  # the monitor knows nothing of this site
            return None
        except DefectloopError as exc:  # one failure is enough: the next calls would wait too
            self.problem = f"monitor unreachable ({exc})"
            return None
        return body


def _missing(name: str, why: str, *, notes: list[str] | None = None) -> Link:
    return Link(name=name, missing=why, notes=notes or [])


def _iso(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def _records(registry: Registry, version: str) -> list[AuditRecord]:
    with registry.session() as s:
        query = select(AuditRecord).where(AuditRecord.model_version == version)
        return list(s.exec(query.order_by(col(AuditRecord.seq))).all())


def _job_of(registry: Registry, jobs: JobStore | None, model: ModelVersion) -> Job | None:
    """The job the run names, else the job whose candidate the version is."""
    if jobs is None:
        return None
    with registry.session() as s:
        run_id = model.training_run_id
        provenance = s.get(RunProvenance, run_id) if run_id is not None else None
    with jobs.session() as s:
        if provenance is not None and provenance.job_id is not None:
            job = s.get(Job, provenance.job_id)
            if job is not None:
                return job
        query = select(Job).where(Job.candidate_version == model.version)
        return s.exec(query.order_by(col(Job.opened_at).desc())).first()


def _no_job_reason(model: ModelVersion) -> str:
    if model.parent_version is None:
        return "bootstrap model: no incident (trained from scratch, not by a retraining job)"
    return (
        f"no retraining job made this version: fine-tuned by hand from {model.parent_version} "
        "(defectloop train --from)"
    )


# --- the links ------------------------------------------------------------------------------


def _incident(job: Job | None, model: ModelVersion, monitor: MonitorReader) -> Link:
    if job is None:
        return _missing("incident", _no_job_reason(model))
    detail = job.detail
    facts: dict[str, Any] = {
        "incident_ids": job.incident_ids,
        "kind": job.kind,
        "metric": detail.get("metric"),
        "value": detail.get("value"),
        "baseline": detail.get("baseline"),
        "threshold": detail.get("threshold"),
        "n": detail.get("sample_size"),
        "n_positive": detail.get("n_positive"),
        "ci_low": detail.get("ci_low"),
        "ci_high": detail.get("ci_high"),
        "window_start": detail.get("window_start"),
        "window_end": detail.get("window_end"),
        "change_point_at": _iso(job.change_point_at),
        "champion_then": job.model_version,
    }
    notes: list[str] = []
    # Jobs opened before the window and interval were kept: the monitor still has the event.
    if facts["window_start"] is None or facts["ci_low"] is None:
        body = monitor.get(f"/v1/sites/{job.site_id}/incidents")
        found = [
            i for i in (body or {}).get("incidents", []) if i["incident_id"] in job.incident_ids
        ]
        if found:
            degraded = found[-1]["degraded"]
            for key in ("threshold", "ci_low", "ci_high", "window_start", "window_end"):
                facts[key] = facts[key] if facts[key] is not None else degraded.get(key)
            if facts["n_positive"] is None:
                facts["n_positive"] = degraded.get("n_positive")
        else:
            notes.append(
                monitor.problem or "window and interval not recorded and unknown to the monitor"
            )
    return Link(name="incident", facts=facts, notes=notes)


def _annotators(jobs: JobStore, annotation_ids: set[str]) -> dict[str, int]:
    with jobs.session() as s:
        query = select(LabelRow).where(col(LabelRow.annotation_id).in_(sorted(annotation_ids)))
        rows = list(s.exec(query).all())
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.annotator] = counts.get(row.annotator, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _fresh_annotation_ids(jobs: JobStore, job: Job) -> set[str]:
    """The site's labels that count, on images captured since the change point (no manifest)."""
    with jobs.session() as s:
        rows = list(s.exec(select(LabelRow).where(LabelRow.site_id == job.site_id)).all())
    with jobs.session() as s:
        images = {
            i.image_id: i
            for i in s.exec(select(ImageRow).where(ImageRow.site_id == job.site_id)).all()
        }
    since = job.change_point_at.replace(tzinfo=None)
    return {
        label.annotation_id
        for image_id, label in chosen_labels(rows).items()
        if image_id in images and images[image_id].captured_at.replace(tzinfo=None) >= since
    }


def _labels(
    job: Job | None,
    model: ModelVersion,
    jobs: JobStore | None,
    manifest: SnapshotManifest | None,
    monitor: MonitorReader,
) -> Link:
    if job is None or jobs is None:
        return _missing("labels", "no retraining job, so no fresh-label campaign")
    facts: dict[str, Any] = {
        "fresh": job.fresh_labels,
        "fresh_defective": job.fresh_defective,
        "labels_request_id": job.labels_request_id,
    }
    notes: list[str] = []
    if manifest is not None:
        fresh = {i.annotation_id for i in manifest.items if i.origin == "fresh"}
    else:
        fresh = _fresh_annotation_ids(jobs, job)
        notes.append("annotators counted from the labels as they are now (no manifest)")
    facts["annotators"] = _annotators(jobs, fresh)
    body = monitor.get(f"/v1/sites/{job.site_id}/agreement")
    if body is not None:
        facts["agreement"] = {
            k: body.get(k)
            for k in ("pairs", "kappa", "decision_agreement", "box_matched_share", "box_mean_iou")
        }
    else:
        notes.append(f"agreement: {monitor.problem or 'the monitor has no data for the site'}")
    return Link(name="labels", facts=facts, notes=notes)


def _dataset(
    job: Job | None,
    model: ModelVersion,
    manifest: SnapshotManifest | None,
    manifest_problem: str | None,
) -> Link:
    facts: dict[str, Any] = {"dataset_version": model.dataset_version}
    notes: list[str] = []
    if job is None:
        facts["note"] = "trained from dataset directories, not from a snapshot"
        return Link(name="dataset", facts=facts)
    counts = dict(job.detail.get("dataset") or {})
    if manifest is not None:
        counts = manifest.counts()
        eval_sets: dict[str, int] = {}
        for item in manifest.items:
            if item.split == "eval":
                eval_sets[item.site_id] = eval_sets.get(item.site_id, 0) + 1
        facts["eval_sets"] = dict(sorted(eval_sets.items()))
        facts["replay_share"] = manifest.replay_share
    elif manifest_problem:
        notes.append(manifest_problem)
    facts.update(
        {
            "snapshot_sha256": job.snapshot_sha256,
            "train_fresh": counts.get("train_fresh"),
            "train_replay": counts.get("train_replay"),
            "eval": counts.get("eval"),
            "excluded": counts.get("excluded"),
        }
    )
    return Link(name="dataset", facts=facts, notes=notes)


def _run(registry: Registry, model: ModelVersion) -> Link:
    facts: dict[str, Any] = {
        "config_sha256": model.config_sha256,
        "seed": model.seed,
        "git_commit": model.git_commit,
        "lockfile_sha256": model.lockfile_sha256,
        "parent_version": model.parent_version,
    }
    notes: list[str] = []
    run: TrainingRun | None = None
    if model.training_run_id is not None:
        try:
            run = registry.get_run(model.training_run_id)
        except NotFoundError:
            notes.append(f"training run {model.training_run_id} is not in the registry")
    else:
        notes.append("registered from a bundle: no training run recorded")
    with registry.session() as s:
        provenance = s.get(RunProvenance, run.id) if run is not None else None
        if model.parent_version is not None:
            digest = s.get(CheckpointDigest, model.parent_version)
            facts["parent_checkpoint_sha256"] = digest.sha256 if digest is not None else None
    if run is not None:
        facts.update(
            {
                "training_run_id": run.id,
                "preset": run.preset,
                "mlflow_run_id": run.mlflow_run_id,
                "train_seconds": run.train_seconds,
            }
        )
    facts["git_dirty"] = provenance.git_dirty if provenance is not None else None
    if run is not None and provenance is None:
        notes.append("git dirty flag not recorded (a run older than provenance records)")
    if model.parent_version is not None:
        try:
            facts["parent_sha256"] = registry.get_model(model.parent_version).sha256
        except NotFoundError:
            notes.append(f"parent {model.parent_version} is not in the registry")
    return Link(name="run", facts=facts, notes=notes)


def _gates(gate: GateEvidence | None, model: ModelVersion) -> Link:
    if gate is None:
        why = (
            "no gate report: first model of its site (nothing to compare with)"
            if model.parent_version is None
            else "no gate report: deployed by hand or gates waived"
        )
        return _missing("gates", why)
    report = gate.report
    return Link(
        name="gates",
        facts={
            "passed": report.passed,
            "champion_version": report.champion_version,
            "degraded_site": report.improvement.model_dump(mode="json", exclude={"reasons"}),
            "other_sites": [row.model_dump(mode="json") for row in report.non_inferiority],
            "parity_max_abs_diff": max(report.parity.max_abs_diff.values(), default=None),
            "latency_ms": {
                "champion": report.latency.champion_ms,
                "candidate": report.latency.candidate_ms,
            },
            "reasons": report.reasons,
            "recorded_at": _iso(gate.recorded_at),
        },
    )


def _approval(records: list[AuditRecord], policy: str | None) -> Link:
    promoted = [r for r in records if r.action == AuditAction.PROMOTED.value]
    approvals = [r for r in records if r.action == AuditAction.APPROVED.value]
    refused = [
        {"by": r.actor, "at": _iso(r.at), "why": r.reason}
        for r in records
        if r.action == AuditAction.APPROVAL_REFUSED.value
    ]
    if not promoted and not approvals:
        why = "not promoted" + (f" (site policy: {policy})" if policy else "")
        return Link(name="approval", missing=why, facts={"refused": refused} if refused else {})
    facts: dict[str, Any] = {"refused": refused}
    if approvals:
        facts["approved_by"] = approvals[-1].actor
        facts["approved_at"] = _iso(approvals[-1].at)
        facts["comment"] = approvals[-1].reason
    if promoted:
        facts["approved_by"] = promoted[-1].evidence.get("approved_by", facts.get("approved_by"))
        facts["promoted_by"] = promoted[-1].actor
        facts["promoted_at"] = _iso(promoted[-1].at)
    return Link(name="approval", facts=facts)


def _shadow(
    job: Job | None, records: list[AuditRecord], model: ModelVersion, monitor: MonitorReader
) -> Link:
    started = [r for r in records if r.action == AuditAction.SHADOW.value]
    if not started:
        return _missing("shadow", "never in shadow (deployed directly, or not deployed yet)")
    facts: dict[str, Any] = {"since": _iso(started[0].at)}
    ended = [
        r
        for r in records
        if r.seq is not None
        and r.seq > (started[0].seq or 0)
        and r.action in (AuditAction.PROMOTED.value, AuditAction.RETIRED.value)
    ]
    if ended:
        end = ended[0]
        facts["until"] = _iso(end.at)
        facts["ended_by"] = end.action + (f": {end.reason}" if end.reason != end.action else "")
    notes: list[str] = []
    card = (job.detail.get("scorecard") if job is not None else None) or None
    if not ended and model.site is not None:
        body = monitor.get(f"/v1/sites/{model.site}/scorecards")
        live = [
            c
            for c in (body or {}).get("scorecards", [])
            if c.get("candidate_version") == model.version
        ]
        if live:
            card = live[0]
        elif monitor.problem:
            notes.append(monitor.problem)
    if card:
        facts["scorecard"] = {
            k: card.get(k)
            for k in (
                "verdict",
                "n_pairs",
                "n_positive",
                "mcnemar_p",
                "correct_mcnemar_p",
                "recall",
                "precision",
            )
        }
    else:
        notes.append("no scorecard recorded")
    return Link(name="shadow", facts=facts, notes=notes)


def _after(records: list[AuditRecord], model: ModelVersion, monitor: MonitorReader) -> Link:
    promoted = [r for r in records if r.action == AuditAction.PROMOTED.value]
    if not promoted or model.site is None:
        return _missing("after_promotion", "not promoted")
    facts: dict[str, Any] = {"promoted_at": _iso(promoted[-1].at)}
    # Leaving the shadow slot on promotion is a retirement too, of the shadow role only.
    retired = [
        r
        for r in records
        if r.action == AuditAction.RETIRED.value
        and r.evidence.get("role") == "champion"
        and (r.seq or 0) > (promoted[-1].seq or 0)
    ]
    if retired:
        facts["retired_at"] = _iso(retired[-1].at)
        facts["retired_why"] = retired[-1].reason
    body = monitor.get(f"/v1/sites/{model.site}/performance")
    mine = [m for m in (body or {}).get("models", []) if m.get("model_version") == model.version]
    if not mine:
        why = monitor.problem or "the monitor has no labelled predictions of this version now"
        return Link(name="after_promotion", facts=facts, notes=[why])
    window = mine[0]["count_window"]
    facts.update(
        {
            "role": mine[0].get("role"),
            "n_images": window.get("n_images"),
            "recall": window.get("recall"),
            "precision": window.get("precision"),
            "box_ap50": (window.get("box_ap50") or {}).get("map50"),
        }
    )
    return Link(name="after_promotion", facts=facts)


# --- assembly -------------------------------------------------------------------------------


def _manifest(
    job: Job | None, blobs: BlobStore | None
) -> tuple[SnapshotManifest | None, str | None]:
    if job is None or job.snapshot_sha256 is None:
        return None, None
    if blobs is None:
        return None, "snapshot manifest not read (no blob store)"
    try:
        return load_manifest(blobs, job.snapshot_sha256), None
    except DefectloopError as exc:
        return None, f"snapshot manifest not readable: {exc}"


def explain(
    version: str,
    *,
    registry: Registry,
    jobs: JobStore | None = None,
    blobs: BlobStore | None = None,
    monitor: MonitorReader | None = None,
    policy: str | None = None,
) -> Explanation:
    """The chain of ``version`` (``NotFoundError`` only when the version itself is unknown)."""
    model = registry.get_model(version)
    monitor = monitor or MonitorReader(None)
    job = _job_of(registry, jobs, model)
    manifest, manifest_problem = _manifest(job, blobs)
    records = _records(registry, version)
    gate = Governance(registry).latest_gate(version)
    links = [
        _incident(job, model, monitor),
        _labels(job, model, jobs, manifest, monitor),
        _dataset(job, model, manifest, manifest_problem),
        _run(registry, model),
        _gates(gate, model),
        _approval(records, policy),
        _shadow(job, records, model, monitor),
        _after(records, model, monitor),
    ]
    return Explanation(
        version=model.version,
        site=model.site,
        author=model.author,
        created_at=model.created_at.isoformat(),
        job_id=job.job_id if job is not None else None,
        links=links,
    )


@contextmanager
def _stores() -> Iterator[tuple[Registry, JobStore]]:
    registry = Registry()
    try:
        yield registry, JobStore(registry.engine)
    finally:
        registry.dispose()


def explain_version(version: str, *, monitor_url: str | None) -> Explanation:
    """:func:`explain` over the default registry, job store and blob store (trainer settings)."""
    from defectloop.trainer.settings import TrainerSettings

    settings = TrainerSettings()
    with _stores() as (registry, jobs):
        model = registry.get_model(version)
        policy = None
        if model.site is not None:
            policy = settings.promotion_policy.get(model.site, settings.default_promotion_policy)
        try:
            blobs: BlobStore | None = open_blob_store(settings.blob_url)
        except DefectloopError:  # a bad blob URL costs the manifest's details, not the chain
            blobs = None
        return explain(
            version,
            registry=registry,
            jobs=jobs,
            blobs=blobs,
            monitor=MonitorReader(monitor_url),
            policy=policy,
        )


def job_views(site: str | None = None) -> list[dict[str, Any]]:
    """The retraining jobs (of ``site``) from the trainer's database, shaped like ``GET /v1/jobs``."""
    from defectloop.trainer.routes import JobView

    with _stores() as (_, jobs):
        return [json.loads(JobView.of(j).model_dump_json()) for j in jobs.jobs(site)]
