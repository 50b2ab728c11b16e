"""The annotation loop: sample predictions, push tasks, pull annotations, emit events once.

Idempotence:
- a (site, image) is sampled once (``annsync_sample`` primary key) and pushed once: before
  importing, a task carrying the image's key is looked up in Label Studio, so a crash between the
  import and recording the task id does not create a second task;
- an annotation version is recorded before it is published and marked published after the broker
  acknowledged; its ``event_id`` is derived from its ``annotation_id``, so a crash in between
  re-publishes the very same event (consumers dedupe on it), never a different one;
- webhook and reconciliation poll go through the same lock, so they cannot both emit a version.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from defectloop.annotation_sync import convert, signing, store
from defectloop.annotation_sync.labelstudio import LabelStudioClient
from defectloop.annotation_sync.sampling import Quota, SamplingPolicy, decide
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common.errors import InvalidInputError
from defectloop.common.events import AnnotationCompleted, PredictionMade, deterministic_id
from defectloop.common.logging import get_logger

log = get_logger(__name__)

Publish = Callable[[AnnotationCompleted], Awaitable[None]]
ClientFactory = Callable[[str], LabelStudioClient]


def as_utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes: they are UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class _Site:
    client: LabelStudioClient
    project_id: int
    users: dict[int, str] = field(default_factory=dict)


class AnnotationSync:
    def __init__(
        self,
        settings: AnnotationSyncSettings,
        engine: Engine,
        publish: Publish,
        *,
        client_factory: ClientFactory | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self._publish = publish
        self._client_factory = client_factory or self._default_client
        self._clock = clock or (lambda: datetime.now(UTC))
        self._sites: dict[str, _Site] = {}
        self._site_lock = asyncio.Lock()
        self._lock = asyncio.Lock()
        self._push_lock = asyncio.Lock()
        self.policy = SamplingPolicy(
            random_share=settings.random_share,
            uncertainty_margin=settings.uncertainty_margin,
            sample_uncertain=settings.sample_uncertain,
            sample_outliers=settings.sample_outliers,
            overlap_share=settings.overlap_share,
        )

    def _default_client(self, site: str) -> LabelStudioClient:
        inst = self.settings.instance_for(site)
        return LabelStudioClient(
            inst.url,
            inst.token,
            timeout_s=self.settings.label_studio_timeout_s,
            attempts=self.settings.label_studio_retries,
            backoff_s=self.settings.label_studio_backoff_s,
        )

    async def aclose(self) -> None:
        for s in self._sites.values():
            await s.client.aclose()
        self._sites.clear()

    # --- sites and projects --------------------------------------------------------------------

    async def site(self, site: str) -> _Site:
        """The site's Label Studio project (created with its webhook when missing)."""
        async with self._site_lock:
            found = self._sites.get(site)
            if found is not None:
                return found
            client = self._client_factory(site)
            try:
                project_id = await client.ensure_project(site, convert.label_config())
                await client.ensure_webhook(
                    project_id,
                    f"{self.settings.hook_url()}?site={site}",
                    signing.webhook_secret(self.settings.signing_secret),
                )
            except BaseException:
                await client.aclose()
                raise
            found = _Site(client, project_id)
            self._sites[site] = found
            log.info(
                "labelstudio_site_ready", site_id=site, project_id=project_id, url=client.base_url
            )
            return found

    def known_sites(self) -> list[str]:
        return sorted(self._sites)

    # --- sampling and push -------------------------------------------------------------------

    def quota(self, site: str, day: Any) -> Quota:
        campaign = store.get_campaign(self.engine, site, self.settings.default_campaign_target)
        return Quota(
            used_today=store.count_sampled(self.engine, site, day=day),
            daily_budget=self.settings.budget_for(site),
            campaign_done=store.count_sampled(self.engine, site, since=as_utc(campaign.started_at)),
            campaign_target=campaign.target,
        )

    async def on_prediction(self, p: PredictionMade) -> store.Sample | None:
        """Sample ``p`` (or not) and push its task; returns the sample when there is one."""
        existing = store.get_sample(self.engine, p.site_id, p.image_id)
        if existing is None:
            day = p.captured_at.astimezone(UTC).date()
            decision = decide(p, self.policy, self.quota(p.site_id, day))
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
            try:
                with Session(self.engine) as s:
                    s.add(sample)
                    s.commit()
                    s.refresh(sample)
            except IntegrityError:  # a concurrent consumer sampled it first
                sample = store.get_sample(self.engine, p.site_id, p.image_id)
                if sample is None:
                    raise
            log.info(
                "image_sampled",
                site_id=p.site_id,
                image_id=p.image_id,
                reason=sample.reason,
                annotators=sample.annotators,
            )
            existing = sample
        if existing.task_id is None:
            await self.push(existing, p)
        return existing

    def image_link(self, site: str, image_id: str) -> str:
        exp = int(self._clock().timestamp()) + self.settings.link_ttl_s
        return signing.image_url(
            self.settings.base_url(), self.settings.signing_secret, site, image_id, exp
        )

    async def push(self, sample: store.Sample, prediction: PredictionMade | None = None) -> int:
        """Create the sample's Label Studio task (once) and record its id."""
        site = await self.site(sample.site_id)
        async with self._push_lock:  # the consumer and the poll must not push the same sample
            current = store.get_sample(self.engine, sample.site_id, sample.image_id)
            if current is not None and current.task_id is not None:
                sample.task_id, sample.project_id = current.task_id, current.project_id
                return current.task_id
            return await self._push(site, sample, prediction)

    async def _push(
        self, site: _Site, sample: store.Sample, prediction: PredictionMade | None
    ) -> int:
        task_id = await site.client.find_task(site.project_id, sample.key)
        if task_id is None:
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
            if prediction is not None:
                task["predictions"] = [
                    convert.prediction_payload(
                        prediction.boxes,
                        prediction.width,
                        prediction.height,
                        prediction.model_version,
                    )
                ]
            ids = await site.client.import_tasks(site.project_id, [task])
            if len(ids) != 1:
                raise InvalidInputError(f"Label Studio returned {len(ids)} task ids for one task")
            task_id = ids[0]
        with Session(self.engine) as s:
            row = s.get(store.Sample, sample.key)
            assert row is not None
            row.task_id = task_id
            row.project_id = site.project_id
            row.pushed_at = self._clock()
            s.add(row)
            s.commit()
        sample.task_id, sample.project_id = task_id, site.project_id
        log.info(
            "task_pushed",
            site_id=sample.site_id,
            image_id=sample.image_id,
            task_id=task_id,
            project_id=site.project_id,
        )
        return task_id

    async def push_pending(self) -> int:
        """Push samples recorded before a crash but never pushed."""
        pending = store.unpushed(self.engine)
        for sample in pending:
            await self.push(sample)
        return len(pending)

    # --- pull -------------------------------------------------------------------------------

    async def _annotator(self, site: _Site, completed_by: Any) -> str:
        uid = completed_by.get("id") if isinstance(completed_by, dict) else completed_by
        if isinstance(uid, int) and uid not in site.users:
            site.users.update(await site.client.users())
        return convert.annotator_name(completed_by, site.users)

    async def on_annotation(
        self, site_id: str, task: dict[str, Any], annotation: dict[str, Any]
    ) -> AnnotationCompleted | None:
        """Emit this annotation version once; None if already emitted or not one of ours."""
        key = (task.get("data") or {}).get("defectloop_key")
        if isinstance(key, str) and "/" in key:  # reject unreadable input before any I/O
            known = store.get_sample(self.engine, *key.split("/", 1))
            if known is not None:
                convert.convert_annotation(annotation, known.width, known.height)
                convert.parse_time(annotation.get("updated_at") or annotation.get("created_at"))
        site = await self.site(site_id)
        async with self._lock:
            return await self._on_annotation(site_id, site, task, annotation)

    async def _on_annotation(
        self, site_id: str, site: _Site, task: dict[str, Any], annotation: dict[str, Any]
    ) -> AnnotationCompleted | None:
        try:
            ls_id = int(annotation["id"])
            task_id = int(task.get("id") or annotation["task"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"annotation without id/task: {exc!r}") from exc
        key = (task.get("data") or {}).get("defectloop_key")
        sample = (
            store.get_sample(self.engine, *key.split("/", 1))
            if isinstance(key, str) and "/" in key
            else None
        )
        if sample is None:
            sample = store.sample_for_task(self.engine, task_id, site.project_id)
        if sample is None or sample.site_id != site_id:
            log.warning(
                "annotation_ignored",
                site_id=site_id,
                task_id=task_id,
                reason="not a defectloop task of this site",
            )
            return None
        updated_at = convert.parse_time(
            annotation.get("updated_at") or annotation.get("created_at")
        )
        annotation_id = convert.annotation_version_id(ls_id, updated_at)
        latest = store.latest_version(self.engine, ls_id, site_id)
        if latest is not None and (
            latest.annotation_id == annotation_id or as_utc(latest.updated_at) >= updated_at
        ):
            return None
        converted = convert.convert_annotation(annotation, sample.width, sample.height)
        annotator = await self._annotator(site, annotation.get("completed_by"))
        pushed = as_utc(sample.pushed_at) if sample.pushed_at else updated_at
        event = AnnotationCompleted(
            event_id=deterministic_id("annotation.completed", site_id, annotation_id),
            occurred_at=updated_at,
            site_id=site_id,
            camera_id=sample.camera_id,
            image_id=sample.image_id,
            annotation_id=annotation_id,
            annotator=annotator,
            status=converted.status,
            boxes=converted.boxes,
            skip_reason=converted.skip_reason,
            sampling_reason=sample.reason,
            lead_time_s=max(0.0, (updated_at - pushed).total_seconds()),
            supersedes=latest.annotation_id if latest else None,
            tool_project_id=site.project_id,
            tool_task_id=task_id,
        )
        record = store.AnnotationRecord(
            annotation_id=annotation_id,
            ls_annotation_id=ls_id,
            site_id=site_id,
            image_id=sample.image_id,
            task_id=task_id,
            annotator=annotator,
            status=converted.status.value,
            boxes_json=json.dumps([b.model_dump() for b in converted.boxes]),
            skip_reason=converted.skip_reason,
            day=updated_at.date(),
            updated_at=updated_at,
            supersedes=event.supersedes,
            event_json=event.model_dump_json(),
        )
        with Session(self.engine) as s:
            s.add(record)
            if latest is not None:
                old = s.get(store.AnnotationRecord, latest.annotation_id)
                if old is not None:
                    old.superseded = True
                    s.add(old)
            s.commit()
        await self._publish_record(annotation_id, event)
        log.info(
            "annotation_emitted",
            site_id=site_id,
            image_id=sample.image_id,
            annotation_id=annotation_id,
            status=event.status.value,
            annotator=annotator,
            boxes=len(event.boxes),
            supersedes=event.supersedes,
        )
        return event

    async def _publish_record(self, annotation_id: str, event: AnnotationCompleted) -> None:
        await self._publish(event)
        with Session(self.engine) as s:
            row = s.get(store.AnnotationRecord, annotation_id)
            if row is not None:
                row.published = True
                s.add(row)
                s.commit()

    async def republish_pending(self) -> int:
        """Publish what was recorded but not acknowledged before a crash (same event ids)."""
        pending = store.unpublished(self.engine)
        for row in pending:
            await self._publish_record(
                row.annotation_id, AnnotationCompleted.model_validate_json(row.event_json)
            )
        return len(pending)

    def on_deleted(self, site_id: str, ls_annotation_ids: list[int]) -> int:
        """Annotations deleted in Label Studio leave the progress figures (no event)."""
        n = 0
        with Session(self.engine) as s:
            for ls_id in ls_annotation_ids:
                latest = store.latest_version(self.engine, ls_id, site_id)
                if latest is not None:
                    row = s.get(store.AnnotationRecord, latest.annotation_id)
                    if row is not None and not row.deleted:
                        row.deleted = True
                        s.add(row)
                        n += 1
            s.commit()
        return n

    async def reconcile(self, site_id: str) -> int:
        """Poll the site's project and emit every annotation version not emitted yet."""
        site = await self.site(site_id)
        emitted = 0
        async for task in site.client.iter_tasks(site.project_id):
            for annotation in task.get("annotations") or []:
                try:
                    if await self.on_annotation(site_id, task, annotation) is not None:
                        emitted += 1
                except InvalidInputError as exc:
                    log.warning(
                        "annotation_unreadable",
                        site_id=site_id,
                        task_id=task.get("id"),
                        error=str(exc),
                    )
        if emitted:
            log.info("reconcile_emitted", site_id=site_id, emitted=emitted)
        return emitted

    async def reconcile_all(self) -> int:
        sites = set(self.settings.sites) | set(self._sites) | store.sampled_sites(self.engine)
        total = 0
        for site_id in sorted(sites):
            total += await self.reconcile(site_id)
        return total
