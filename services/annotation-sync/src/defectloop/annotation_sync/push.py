"""Sampling and task push: ``prediction.made`` becomes a pending sample; the pusher makes it a task.

The Kafka handler only decides and records (one database transaction, off the event loop) and
returns, so its offset is committed whatever Label Studio is doing. The pusher pushes pending
samples in capture order, woken by each new sample and by the poll; when Label Studio is down it
keeps them and tries again, so an outage delays tasks but never stalls ``prediction.made``.

Batches: the pending samples of a project go in batches of up to ``push_batch_size``, each ONE
import request (Label Studio returns the new ids in payload order) and ONE database transaction
recording every task id. Oldest batch first (by its oldest sample).

Push idempotence without a lookup per sample: before importing, the batch's samples are marked in
flight (``annsync_push_attempt``, with a batch id the tasks also carry as ``data.defectloop_batch``)
in one transaction. A sample still marked when the next push starts was imported by a push that
crashed (or lost the answer) before recording, or not at all: one Data Manager filter per such
batch id finds what exists, and only the rest is imported again. Nothing is pushed twice, nothing
lost. Overlap samples get a per-task overlap of 2 (a PATCH: the import ignores a task's
``overlap`` and uses the project's ``maximum_annotations``), so Label Studio's own queue serves
them to two different annotators; the PATCH comes before the record, so a crash in between
repeats it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine

from defectloop.annotation_sync import convert, label_requests, signing, store
from defectloop.annotation_sync.projects import ProjectRegistry, SiteProject
from defectloop.annotation_sync.sampling import Quota, SamplingPolicy, SamplingReason, decide
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common import tracing
from defectloop.common.errors import DefectloopError, InvalidInputError, PermanentError
from defectloop.common.events import PredictionMade, ScoredBox
from defectloop.common.logging import get_logger
from defectloop.common.metrics import ANNOTATION_UNPUSHED
from defectloop.common.retry import woken

log = get_logger(__name__)

Clock = Callable[[], datetime]


class Sampler:
    """Decides which champion predictions go to annotators and records them as pending."""

    def __init__(
        self,
        settings: AnnotationSyncSettings,
        engine: Engine,
        *,
        on_sampled: Callable[[], None] = lambda: None,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._on_sampled = on_sampled
        self._clock = clock or (lambda: datetime.now(UTC))
        self.policy = SamplingPolicy(
            random_share=settings.random_share,
            uncertainty_margin=settings.uncertainty_margin,
            sample_uncertain=settings.sample_uncertain,
            sample_outliers=settings.sample_outliers,
            overlap_share=settings.overlap_share,
        )

    def request_states(self, site: str) -> list[label_requests.RequestState]:
        """Every label request of ``site`` with its progress (blocking)."""
        now = self._clock()
        return [
            label_requests.state(r, store.request_labels_done(self.engine, r.request_id), now)
            for r in store.label_requests(self.engine, site)
        ]

    def quota(self, site: str, day: date, requested: bool = False) -> Quota:
        """The site's budget and campaign counts (blocking)."""
        campaign = store.get_campaign(self.engine, site, self.settings.default_campaign_target)
        return Quota(
            used_today=store.count_sampled(self.engine, site, day=day),
            daily_budget=self.settings.budget_for(site),
            campaign_done=store.count_sampled(
                self.engine, site, since=store.as_utc(campaign.started_at)
            ),
            campaign_target=campaign.target,
            requested=requested,
            targeted_today=store.count_sampled(
                self.engine, site, day=day, exclude_reason=SamplingReason.RANDOM.value
            ),
            targeted_budget_share=self.settings.targeted_budget_share,
        )

    def _sample(self, p: PredictionMade) -> store.Sample | None:
        """Decide and record (blocking: runs in a worker thread)."""
        existing = store.get_sample(self.engine, p.site_id, p.image_id)
        if existing is not None:
            return existing
        active = [s for s in self.request_states(p.site_id) if s.active]
        day = p.captured_at.astimezone(UTC).date()
        policy = label_requests.raised_policy(self.policy, active)
        decision = decide(p, policy, self.quota(p.site_id, day, requested=bool(active)))
        if decision is None:
            return None
        sample = store.Sample(
            key=f"{p.site_id}/{p.image_id}",
            site_id=p.site_id,
            image_id=p.image_id,
            camera_id=p.camera_id,
            prediction_id=p.prediction_id,
            reason=decision.reason.value,
            annotators=decision.annotators,
            day=day,
            blob_uri=p.blob_uri,
            width=p.width,
            height=p.height,
            model_version=p.model_version,
            predicted_defective=p.defective,
        )
        boxes = json.dumps([b.model_dump() for b in p.boxes])
        requests = (
            [s.request.request_id for s in active]
            if decision.reason == SamplingReason.RANDOM
            else []
        )
        recorded = store.record_sample(self.engine, sample, boxes, requests)
        log.info(
            "image_sampled",
            site_id=p.site_id,
            image_id=p.image_id,
            reason=recorded.reason,
            annotators=recorded.annotators,
            label_requests=requests or None,
        )
        return recorded

    async def on_prediction(self, p: PredictionMade) -> store.Sample | None:
        """Record ``p`` as a pending sample if it is sampled; returns the sample (new or not)."""
        sample = await store.call(self._sample, p)
        if sample is not None and sample.task_id is None:
            self._on_sampled()
        return sample


class TaskPusher:
    """Creates the Label Studio task of each pending sample (once), in batches, and records ids."""

    def __init__(
        self,
        settings: AnnotationSyncSettings,
        engine: Engine,
        registry: ProjectRegistry,
        *,
        clock: Clock | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._backlog_sites: set[str] = set()

    def wake(self) -> None:
        """Ask the pusher loop to push now (a sample was recorded)."""
        self._wake.set()

    def image_link(self, site: str, image_id: str) -> str:
        exp = int(self._clock().timestamp()) + self.settings.link_ttl_s
        return signing.image_url(
            self.settings.base_url(), self.settings.signing_secret, site, image_id, exp
        )

    def _task(self, sample: store.Sample, boxes_json: str | None, batch_id: str) -> dict[str, Any]:
        task: dict[str, Any] = {
            "data": {
                "image": self.image_link(sample.site_id, sample.image_id),
                "defectloop_key": sample.key,
                "defectloop_batch": batch_id,
                "site": sample.site_id,
                "camera": sample.camera_id,
                "image_id": sample.image_id,
                "prediction_id": sample.prediction_id,
                "sampling_reason": sample.reason,
                "annotators_wanted": sample.annotators,
                "model_version": sample.model_version,
                "width": sample.width,
                "height": sample.height,
            },
            "meta": {"site": sample.site_id, "image_id": sample.image_id},
        }
        if boxes_json is not None:
            boxes = [ScoredBox.model_validate(b) for b in json.loads(boxes_json)]
            task["predictions"] = [
                convert.prediction_payload(boxes, sample.width, sample.height, sample.model_version)
            ]
        return task

    async def push_batch(self, samples: list[store.Sample]) -> int:
        """Create the tasks of ``samples`` (one site's, each once) and record their ids; how many
        were recorded. Raises what Label Studio raised (the samples stay pending)."""
        if not samples:
            return 0
        site = samples[0].site_id
        attributes: dict[str, str | int] = {
            tracing.ATTR_SITE: site,
            tracing.ATTR_BATCH_SIZE: len(samples),
        }
        with tracing.tracer_for(self.settings, __name__).start_as_current_span(
            "annotation.push", attributes=attributes
        ):
            project = await self.registry.site(site)
            async with self._lock:
                return await self._push_batch(project, samples)

    async def _push_batch(self, project: SiteProject, samples: list[store.Sample]) -> int:
        client, site = project.client, samples[0].site_id
        # Already pushed (another push got there first): skip; in flight before: look up.
        current = await store.call(store.task_ids_of, self.engine, [s.key for s in samples])
        todo = [s for s in samples if current.get(s.key) is None]
        attempts = await store.call(store.push_attempts, self.engine, [s.key for s in todo])
        task_ids: dict[str, int] = {}
        for batch_id in sorted({a.batch_id for a in attempts.values()}):
            found = await client.find_tasks(project.project_id, "defectloop_batch", batch_id)
            recovered = {
                k: found[k] for k, a in attempts.items() if a.batch_id == batch_id and k in found
            }
            task_ids.update(recovered)
            if recovered:
                log.warning(
                    "task_push_recovered",
                    site_id=site,
                    project_id=project.project_id,
                    batch_id=batch_id,
                    tasks=len(recovered),
                )
        fresh = [s for s in todo if s.key not in task_ids]
        if fresh:
            batch_id = uuid.uuid4().hex
            boxes = await store.call(store.sample_boxes_of, self.engine, [s.key for s in fresh])
            payload = [self._task(s, boxes.get(s.key), batch_id) for s in fresh]
            await store.call(
                store.mark_in_flight,
                self.engine,
                [s.key for s in fresh],
                batch_id,
                project.project_id,
                self._clock(),
            )
            ids = await client.import_tasks(project.project_id, payload)
            if len(ids) != len(fresh):
                raise InvalidInputError(
                    f"Label Studio returned {len(ids)} task ids for {len(fresh)} tasks"
                )
            task_ids.update({s.key: i for s, i in zip(fresh, ids, strict=True)})
        by_key = {s.key: s for s in todo}
        # Overlap before the record: a crash in between repeats the (idempotent) PATCH.
        await asyncio.gather(
            *(
                client.set_overlap(task_id, by_key[key].annotators)
                for key, task_id in task_ids.items()
                if by_key[key].annotators > 1
            )
        )
        if not task_ids:
            return 0
        rows = await store.call(
            store.mark_pushed_many, self.engine, task_ids, project.project_id, self._clock()
        )
        for row in rows:
            sample = by_key[row.key]
            sample.task_id, sample.project_id, sample.pushed_at = (
                row.task_id,
                row.project_id,
                row.pushed_at,
            )
        log.info(
            "tasks_pushed",
            site_id=site,
            project_id=project.project_id,
            tasks=len(rows),
            recovered=len(task_ids) - len(fresh),
            overlap=sum(1 for s in todo if s.annotators > 1),
            first_task_id=min(task_ids.values()),
        )
        return len(rows)

    async def _push_or_split(self, batch: list[store.Sample]) -> int:
        """Push a batch; when Label Studio refuses it (4xx), push its samples one by one so only
        the bad ones are left out (each logged), as a lone push would do."""
        try:
            return await self.push_batch(batch)
        except PermanentError as exc:
            if len(batch) == 1:
                sample = batch[0]
                log.error(
                    "task_push_failed",
                    site_id=sample.site_id,
                    image_id=sample.image_id,
                    reason=exc.reason,
                    error=str(exc)[:300],
                )
                return 0
            log.warning(
                "task_batch_refused",
                site_id=batch[0].site_id,
                tasks=len(batch),
                reason=exc.reason,
                error=str(exc)[:300],
            )
        pushed = 0
        for sample in batch:
            pushed += await self._push_or_split([sample])
        return pushed

    async def push_pending(self) -> int:
        """Push every pending sample in per-site batches, oldest batch first; raises when Label
        Studio stays down (what is left stays pending)."""
        pending = await store.call(store.unpushed, self.engine)
        try:
            pushed = 0
            for batch in batches(pending, self.settings.push_batch_size):
                pushed += await self._push_or_split(batch)
            return pushed
        finally:
            await self.report_backlog()

    async def report_backlog(self) -> dict[str, int]:
        """Set the ``annotation_sync_unpushed`` gauge (per site) from the store; log it when
        samples are waiting."""
        counts = await store.call(store.unpushed_counts, self.engine)
        self._backlog_sites |= set(counts)
        for site in self._backlog_sites:  # a site that caught up reads 0, not a stale value
            ANNOTATION_UNPUSHED.labels(site).set(counts.get(site, 0))
        if counts:
            log.info("task_push_backlog", unpushed=sum(counts.values()), per_site=counts)
        return counts

    async def run(self) -> None:
        """Push pending samples whenever woken (or every poll period); retry after failures."""
        while True:
            await woken(self._wake, self.settings.poll_interval_s)
            self._wake.clear()
            try:
                await self.push_pending()
            except DefectloopError as exc:  # transient (Label Studio down) or config
                log.warning(
                    "task_push_deferred",
                    reason=exc.reason,
                    error=str(exc)[:300],
                    retry_in_s=self.settings.push_retry_s,
                )
                # Label Studio is down: back off instead of hammering it on every new sample.
                await asyncio.sleep(self.settings.push_retry_s)
                self._wake.set()
            except Exception:  # a bug must not stop the pusher for good: log it, keep going
                log.exception("task_push_crashed")
                await asyncio.sleep(self.settings.push_retry_s)
                self._wake.set()


def batches(pending: list[store.Sample], size: int) -> list[list[store.Sample]]:
    """``pending`` (oldest first) cut into per-site batches of at most ``size``, ordered by each
    batch's oldest sample: a site's backlog never starves another's newer samples for long."""
    per_site: dict[str, list[store.Sample]] = {}
    for sample in pending:
        per_site.setdefault(sample.site_id, []).append(sample)
    cut = [rows[i : i + size] for rows in per_site.values() for i in range(0, len(rows), size)]
    return sorted(cut, key=lambda b: (store.as_utc(b[0].created_at), b[0].key))
