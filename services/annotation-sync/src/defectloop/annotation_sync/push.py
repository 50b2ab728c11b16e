"""Sampling and task push: ``prediction.made`` becomes a pending sample; the pusher makes it a task.

The Kafka handler only decides and records (one database transaction, off the event loop) and
returns, so its offset is committed whatever Label Studio is doing. The pusher pushes pending
samples in capture order, woken by each new sample and by the poll; when Label Studio is down it
keeps them and tries again, so an outage delays tasks but never stalls ``prediction.made``.

Push idempotence: before importing, a task carrying the sample's key is looked up in Label
Studio, so a crash (or a lost response) between the import and recording the task id does not
create a second task. Overlap samples get a per-task overlap of 2, so Label Studio's own queue
serves them to two different annotators.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
    """Creates the Label Studio task of each pending sample (once) and records its id."""

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

    def wake(self) -> None:
        """Ask the pusher loop to push now (a sample was recorded)."""
        self._wake.set()

    def image_link(self, site: str, image_id: str) -> str:
        exp = int(self._clock().timestamp()) + self.settings.link_ttl_s
        return signing.image_url(
            self.settings.base_url(), self.settings.signing_secret, site, image_id, exp
        )

    async def push(self, sample: store.Sample) -> int:
        """Create the sample's Label Studio task (once) and record its id."""
        attributes = {tracing.ATTR_SITE: sample.site_id, tracing.ATTR_IMAGE: sample.image_id}
        with tracing.tracer_for(self.settings, __name__).start_as_current_span(
            "annotation.push", attributes=attributes
        ):
            return await self._push_once(sample)

    async def _push_once(self, sample: store.Sample) -> int:
        project = await self.registry.site(sample.site_id)
        async with self._lock:
            current = await store.call(
                store.get_sample, self.engine, sample.site_id, sample.image_id
            )
            if current is not None and current.task_id is not None:
                sample.task_id, sample.project_id = current.task_id, current.project_id
                return current.task_id
            return await self._push(project, sample)

    def _task(self, sample: store.Sample, boxes_json: str | None) -> dict[str, Any]:
        task: dict[str, Any] = {
            "data": {
                "image": self.image_link(sample.site_id, sample.image_id),
                "defectloop_key": sample.key,
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

    async def _push(self, project: SiteProject, sample: store.Sample) -> int:
        client = project.client
        task_id = await client.find_task(project.project_id, sample.key)
        if task_id is None:
            boxes = await store.call(store.sample_boxes, self.engine, sample.key)
            ids = await client.import_tasks(project.project_id, [self._task(sample, boxes)])
            if len(ids) != 1:
                raise InvalidInputError(f"Label Studio returned {len(ids)} task ids for one task")
            task_id = ids[0]
        if sample.annotators > 1:  # also after a crash between the import and this call
            await client.set_overlap(task_id, sample.annotators)
        row = await store.call(
            store.mark_pushed, self.engine, sample.key, task_id, project.project_id, self._clock()
        )
        sample.task_id, sample.project_id, sample.pushed_at = (
            row.task_id,
            row.project_id,
            row.pushed_at,
        )
        log.info(
            "task_pushed",
            site_id=sample.site_id,
            image_id=sample.image_id,
            task_id=task_id,
            project_id=project.project_id,
            overlap=sample.annotators,
        )
        return task_id

    async def push_pending(self) -> int:
        """Push every pending sample, oldest first; raises when Label Studio stays down."""
        pushed = 0
        for sample in await store.call(store.unpushed, self.engine):
            try:
                await self.push(sample)
            except PermanentError as exc:  # this sample only; the others still go
                log.error(
                    "task_push_failed",
                    site_id=sample.site_id,
                    image_id=sample.image_id,
                    reason=exc.reason,
                    error=str(exc)[:300],
                )
                continue
            pushed += 1
        return pushed

    async def run(self) -> None:
        """Push pending samples whenever woken (or every poll period); retry after failures."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.settings.poll_interval_s)
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
