"""The retraining loop: moves each open job one step along its state machine.

Handlers only record facts and open jobs (:mod:`defectloop.trainer.handlers`); this loop, woken by
them or by its period, decides from the database alone what each open job does next, so a
restarted trainer continues from whatever state the previous process left:

* ``waiting_for_labels``: count fresh non-skipped labels of the site since the change point; when
  short, ask annotation-sync once (``labels.requested``, one id per job); when enough, snapshot;
  past the deadline, ``timed_out`` with the counts.
* ``snapshotting``: build, store and materialise the dataset snapshot, submit the training run
  (the runner is idempotent per job and attempt), then ``training``.
* ``training``: poll the run; success -> ``gating`` (the candidate's version recorded); a failure
  -> ``failed`` with its reason; a lost run -> the next attempt, unless that version is already
  registered (then it did finish).
* ``gating``: handed to ``on_trained`` (gates, shadow, deployment: governance), when one is given
  (:class:`defectloop.trainer.gating.Gatekeeper`).
* ``shadow`` / ``awaiting_approval``: handed to ``on_shadow`` on every tick (the monitor's
  scorecard, promotion or rejection: :class:`defectloop.trainer.promotion.Promoter`).

Blocking work (database, blob store, subprocess start, COCO files) runs in worker threads: the
event loop that consumes Kafka is never held by it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from defectloop.common import tracing
from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import DefectloopError, NotFoundError
from defectloop.common.events import LabelsRequested, MetricDegraded
from defectloop.common.logging import get_logger
from defectloop.common.retry import woken
from defectloop.trainer.jobs import (
    Decision,
    Job,
    JobState,
    JobStore,
    LabelledImage,
    RetrainPolicy,
    enough,
    fresh_counts,
    labels_request_id_for,
    model_version_for,
)
from defectloop.trainer.runner import JobRunner, RunStatus, TrainingSpec
from defectloop.trainer.settings import TrainerSettings
from defectloop.trainer.snapshot import (
    build_manifest,
    load_manifest,
    materialise,
    store_manifest,
)

log = get_logger(__name__)

PublishLabelsRequest = Callable[[LabelsRequested], Awaitable[None]]
OnTrained = Callable[[Job], Awaitable[None]]
PolicyFor = Callable[[str], RetrainPolicy]


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class Retrainer:
    """Opens jobs from incidents and advances them; one instance per trainer process."""

    def __init__(
        self,
        settings: TrainerSettings,
        store: JobStore,
        runner: JobRunner,
        blobs: BlobStore,
        publish_labels_request: PublishLabelsRequest,
        *,
        on_trained: OnTrained | None = None,
        on_shadow: OnTrained | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.runner = runner
        self.blobs = blobs
        self._publish = publish_labels_request
        self._on_trained = on_trained
        self._on_shadow = on_shadow
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._tracer = tracing.tracer_for(settings, __name__)
        self._incident_spans: dict[str, list[tracing.SpanContext]] = {}

    def policy(self, site_id: str) -> RetrainPolicy:
        return self.settings.retrain_policy_for(site_id)

    def wake(self) -> None:
        self._wake.set()

    async def on_incident(self, event: MetricDegraded) -> Decision:
        # In the metric.degraded's trace (its consumer span is the parent); the job's steps link
        # back to this span (self._incident_spans), and both carry the job id.
        with self._tracer.start_as_current_span(
            "trainer.incident",
            attributes={tracing.ATTR_SITE: event.site_id, tracing.ATTR_EVENT_ID: event.event_id},
        ) as span:
            decision = await asyncio.to_thread(
                self.store.on_incident, event, self.policy(event.site_id)
            )
            span.set_attributes(
                {tracing.ATTR_JOB_ID: decision.job.job_id, tracing.ATTR_OUTCOME: decision.action}
            )
            self._incident_spans.setdefault(decision.job.job_id, []).append(span.get_span_context())
        log.info(
            "incident_handled",
            site_id=event.site_id,
            incident_id=event.incident_id,
            kind=event.kind.value,
            action=decision.action,
            job_id=decision.job.job_id,
            job_state=decision.job.state,
            reason=decision.job.reason,
        )
        self.wake()
        return decision

    async def run_forever(self) -> None:
        """Tick on every wake-up, and at least every ``job_tick_s`` (timeouts, run polling)."""
        while True:
            try:
                await self.tick()
            except DefectloopError as exc:
                log.warning("retrain_tick_failed", reason=exc.reason, error=str(exc))
            except Exception:
                log.exception("retrain_tick_crashed")
            self._wake.clear()
            await woken(self._wake, self.settings.job_tick_s)  # or the period elapsed: tick

    async def tick(self) -> None:
        """Advance every open job by as many steps as it can take now."""
        async with self._lock:
            for job in await asyncio.to_thread(self.store.open_jobs):
                await self._advance(job)

    async def _advance(self, job: Job) -> None:
        previous = None
        # Step on while a step changes the state; a run just submitted is polled next tick.
        while (
            job.state != previous
            and job.job_state in _STEPS
            and not (previous is not None and job.job_state == JobState.TRAINING)
        ):
            previous = job.state
            started_ns = time.time_ns()
            try:
                job = await _STEPS[job.job_state](self, job)
                self._trace_step(previous, job, started_ns)
            except DefectloopError as exc:
                if job.job_state in _HOOKED:  # the hooks own these states' failures
                    raise
                log.error(
                    "retrain_job_failed", job_id=job.job_id, reason=exc.reason, error=str(exc)
                )
                job = await asyncio.to_thread(
                    self.store.update,
                    job.job_id,
                    to=JobState.FAILED,
                    reason=f"{exc.reason}: {exc}",
                )

    def _trace_step(self, previous: str, job: Job, started_ns: int) -> None:
        """A ``trainer.job.<state>`` span for a step that moved the job (a poll that changed
        nothing leaves no span), linked to the incident(s) that opened the job."""
        if job.state == previous:
            return
        span = self._tracer.start_span(
            f"trainer.job.{previous}",
            start_time=started_ns,
            links=[tracing.Link(c) for c in self._incident_spans.get(job.job_id, ())],
            attributes={
                tracing.ATTR_SITE: job.site_id,
                tracing.ATTR_JOB_ID: job.job_id,
                tracing.ATTR_MODEL_VERSION: job.candidate_version or "",
                tracing.ATTR_OUTCOME: job.state,
            },
        )
        span.end()

    # --- steps ------------------------------------------------------------------------------

    async def _wait_for_labels(self, job: Job) -> Job:
        policy = self.policy(job.site_id)
        images = await asyncio.to_thread(self.store.labelled_images, job.site_id)
        counts = fresh_counts(images, job.change_point_at, policy.eval_fraction)
        wanted = (
            f"{policy.min_fresh_labels} ({policy.min_fresh_defective} defective), "
            f"{policy.min_eval_defective} defective frozen for evaluation"
        )
        have = (
            f"{counts.labels} fresh labels ({counts.defective} defective), "
            f"{counts.eval_defective} defective frozen for evaluation"
        )
        if enough(counts, policy):
            log.info("fresh_labels_enough", job_id=job.job_id, site_id=job.site_id, have=have)
            return await asyncio.to_thread(
                self.store.update,
                job.job_id,
                to=JobState.SNAPSHOTTING,
                fresh_labels=counts.labels,
                fresh_defective=counts.defective,
                reason=f"{have} of {wanted} wanted",
            )
        if _now() >= _aware(job.deadline_at):
            log.warning("fresh_labels_timed_out", job_id=job.job_id, site_id=job.site_id, have=have)
            return await asyncio.to_thread(
                self.store.update,
                job.job_id,
                to=JobState.TIMED_OUT,
                fresh_labels=counts.labels,
                fresh_defective=counts.defective,
                reason=f"only {have} of {wanted} by {_aware(job.deadline_at).isoformat()}",
            )
        if job.labels_requested_at is None:
            request = LabelsRequested(
                site_id=job.site_id,
                request_id=labels_request_id_for(job.job_id),
                reason="incident",
                incident_id=job.incident_ids[0],
                random_share=policy.request_random_share,
                target_labels=policy.min_fresh_labels,
                expires_at=_aware(job.deadline_at),
                requested_by=self.settings.service_name,
            )
            # Published before it is recorded: a crash in between asks again with the same id.
            await self._publish(request)
            log.info("labels_requested", job_id=job.job_id, site_id=job.site_id, have=have)
            job = await asyncio.to_thread(
                self.store.update,
                job.job_id,
                labels_request_id=request.request_id,
                labels_requested_at=_now(),
            )
        if (counts.labels, counts.defective) != (job.fresh_labels, job.fresh_defective):
            job = await asyncio.to_thread(
                self.store.update,
                job.job_id,
                fresh_labels=counts.labels,
                fresh_defective=counts.defective,
                reason=f"waiting: {have} of {wanted}",
            )
        return job

    async def _snapshot_and_submit(self, job: Job) -> Job:
        policy = self.policy(job.site_id)
        if job.snapshot_sha256 is not None:  # a retried attempt trains on the first's snapshot
            digest = job.snapshot_sha256
        else:
            digest, counts = await asyncio.to_thread(self._snapshot, job, policy)
            detail = {**job.detail, "dataset": counts}
            job = await asyncio.to_thread(
                self.store.update,
                job.job_id,
                snapshot_sha256=digest,
                detail_json=json.dumps(detail, sort_keys=True),
            )
        version = model_version_for(job.job_id, job.site_id, job.attempt)
        spec = await asyncio.to_thread(self._spec, job, digest, version)
        handle = await asyncio.to_thread(self.runner.submit, spec)
        log.info("training_started", job_id=job.job_id, model_version=version, snapshot=digest)
        return await asyncio.to_thread(
            self.store.update,
            job.job_id,
            to=JobState.TRAINING,
            run_handle=handle,
            candidate_version=version,
            reason=f"training {version} on snapshot {digest[:12]}",
        )

    async def _poll_training(self, job: Job) -> Job:
        if job.run_handle is None:  # pragma: no cover - training is entered with a handle
            return job
        state = await asyncio.to_thread(self.runner.poll, job.run_handle)
        if state.status == RunStatus.RUNNING:
            if state.progress and state.progress != job.detail.get("progress"):
                # The run's epoch, for ops and the demo's live view (GET /v1/jobs).
                detail = {**job.detail, "progress": state.progress}
                return await asyncio.to_thread(
                    self.store.update, job.job_id, detail_json=json.dumps(detail, sort_keys=True)
                )
            return job
        if state.status == RunStatus.SUCCEEDED:
            return await self._trained(job, state.model_version or job.candidate_version)
        version = job.candidate_version
        # Lost after registering (killed before writing its result): that version is done.
        if (
            state.status == RunStatus.LOST
            and version is not None
            and await asyncio.to_thread(self._registered, version)
        ):
            return await self._trained(job, version)
        policy = self.policy(job.site_id)
        if state.status == RunStatus.LOST and job.attempt < policy.max_attempts:
            log.warning("training_lost_retrying", job_id=job.job_id, attempt=job.attempt + 1)
            return await asyncio.to_thread(
                self.store.update,
                job.job_id,
                to=JobState.SNAPSHOTTING,
                attempt=job.attempt + 1,
                run_handle=None,
                reason=f"attempt {job.attempt} lost ({state.detail}); retrying",
            )
        log.error("training_failed", job_id=job.job_id, detail=state.detail)
        return await asyncio.to_thread(
            self.store.update, job.job_id, to=JobState.FAILED, reason=state.detail
        )

    async def _trained(self, job: Job, version: str | None) -> Job:
        job = await asyncio.to_thread(
            self.store.update,
            job.job_id,
            to=JobState.GATING,
            candidate_version=version,
            reason=f"{version} trained; gates next",
        )
        log.info("training_finished", job_id=job.job_id, model_version=version)
        return job

    async def _gate(self, job: Job) -> Job:
        if self._on_trained is not None:
            await self._on_trained(job)
            return await asyncio.to_thread(self.store.get, job.job_id)
        return job

    async def _watch_shadow(self, job: Job) -> Job:
        if self._on_shadow is not None:
            await self._on_shadow(job)
            return await asyncio.to_thread(self.store.get, job.job_id)
        return job

    # --- blocking helpers (worker threads) --------------------------------------------------

    def _snapshot(self, job: Job, policy: RetrainPolicy) -> tuple[str, dict[str, int]]:
        from defectloop.trainer.config import resolve_config

        labelled = self.store.labelled_images()
        eval_ids = self.store.eval_assignment(labelled, policy.eval_fraction)
        labels = resolve_config(
            self.settings.train_preset,
            site=job.site_id,
            overrides=self.settings.train_overrides or None,
        ).labels
        manifest = build_manifest(
            site_id=job.site_id,
            job_id=job.job_id,
            change_point_at=_aware(job.change_point_at),
            labelled=labelled,
            eval_ids=eval_ids,
            labels=labels,
            replay_share=policy.replay_share,
            seed=self.settings.train_seed,
            earlier=self._champion_training_data(job.site_id),
            earlier_share=policy.champion_replay_share,
        )
        digest = store_manifest(manifest, self.blobs)
        log.info("snapshot_stored", job_id=job.job_id, snapshot=digest, **manifest.counts())
        return digest, manifest.counts()

    def _spec(self, job: Job, digest: str, version: str) -> TrainingSpec:
        work = self.settings.resolved_work_dir() / job.job_id / f"a{job.attempt}"
        # Rebuilt from the blob store by digest: what trains is what the manifest says.
        dirs = materialise(load_manifest(self.blobs, digest), self.blobs, work / "dataset")
        return TrainingSpec(
            job_id=job.job_id,
            attempt=job.attempt,
            model_version=version,
            site_id=job.site_id,
            dataset_dirs=(str(dirs["train"]),),
            snapshot_sha256=digest,
            preset=self.settings.train_preset,
            seed=self.settings.train_seed,
            overrides=self.settings.train_overrides,
            out_dir=str(work / "bundle"),
            parent_bundle=self._parent_bundle(job),
            database_url=self.settings.resolved_database_url(),
        )

    def _champion_training_data(self, site_id: str) -> list[LabelledImage]:
        """What the champion was trained on (replayed against forgetting), if stored."""
        champion = self.store.champion(site_id)
        if champion is None:
            return []
        from defectloop.trainer.registry import Registry
        from defectloop.trainer.training_data import earlier_training_images

        registry = Registry(self.settings.resolved_database_url())
        try:
            return earlier_training_images(registry, champion.model_version, self.blobs)
        finally:
            registry.dispose()

    def _parent_bundle(self, job: Job) -> str | None:
        """The champion's registered bundle (its checkpoint is verified when training loads it)."""
        champion = self.store.champion(job.site_id)
        if champion is None:
            return None
        from defectloop.trainer.registry import Registry

        registry = Registry(self.settings.resolved_database_url())
        try:
            return registry.get_model(champion.model_version).bundle_path
        except NotFoundError:
            log.warning(
                "champion_not_registered",
                site_id=job.site_id,
                model_version=champion.model_version,
            )
            return None
        finally:
            registry.dispose()

    def _registered(self, version: str) -> bool:
        from defectloop.trainer.registry import Registry

        registry = Registry(self.settings.resolved_database_url())
        try:
            registry.get_model(version)
        except NotFoundError:
            return False
        finally:
            registry.dispose()
        return True


_STEPS: dict[JobState, Callable[[Retrainer, Job], Awaitable[Job]]] = {
    JobState.WAITING_FOR_LABELS: Retrainer._wait_for_labels,
    JobState.SNAPSHOTTING: Retrainer._snapshot_and_submit,
    JobState.TRAINING: Retrainer._poll_training,
    JobState.GATING: Retrainer._gate,
    JobState.SHADOW: Retrainer._watch_shadow,
    JobState.AWAITING_APPROVAL: Retrainer._watch_shadow,
}
_HOOKED = frozenset({JobState.GATING, JobState.SHADOW, JobState.AWAITING_APPROVAL})
