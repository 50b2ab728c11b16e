"""Pull: Label Studio annotations (webhook or reconciliation poll) become ``annotation.completed``.

- an annotation version is recorded before it is published and marked published after the broker
  acknowledged; its ``event_id`` is derived from its ``annotation_id``, so a crash in between
  re-publishes the very same event (consumers dedupe on it), never a different one;
- webhook and reconciliation poll go through the same lock, so they cannot both emit a version.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import Engine

from defectloop.annotation_sync import convert, store
from defectloop.annotation_sync.projects import ProjectRegistry, SiteProject
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common.errors import InvalidInputError
from defectloop.common.events import AnnotationCompleted, deterministic_id
from defectloop.common.logging import get_logger

log = get_logger(__name__)

Publish = Callable[[AnnotationCompleted], Awaitable[None]]


def _key(task: dict[str, Any]) -> tuple[str, str] | None:
    key = (task.get("data") or {}).get("defectloop_key")
    if isinstance(key, str) and "/" in key:
        site, image = key.split("/", 1)
        return site, image
    return None


class AnnotationPuller:
    def __init__(
        self,
        settings: AnnotationSyncSettings,
        engine: Engine,
        registry: ProjectRegistry,
        publish: Publish,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.registry = registry
        self._publish = publish
        self._lock = asyncio.Lock()

    async def on_annotation(
        self, site_id: str, task: dict[str, Any], annotation: dict[str, Any]
    ) -> AnnotationCompleted | None:
        """Emit this annotation version once; None if already emitted or not one of ours."""
        key = _key(task)
        if key is not None:  # reject unreadable input before any Label Studio call
            known = await store.call(store.get_sample, self.engine, *key)
            if known is not None:
                convert.convert_annotation(annotation, known.width, known.height)
                convert.parse_time(annotation.get("updated_at") or annotation.get("created_at"))
        project = await self.registry.site(site_id)
        async with self._lock:
            return await self._on_annotation(site_id, project, task, annotation)

    async def _on_annotation(
        self, site_id: str, project: SiteProject, task: dict[str, Any], annotation: dict[str, Any]
    ) -> AnnotationCompleted | None:
        try:
            ls_id = int(annotation["id"])
            task_id = int(task.get("id") or annotation["task"])
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidInputError(f"annotation without id/task: {exc!r}") from exc
        key = _key(task)
        sample = await store.call(store.get_sample, self.engine, *key) if key else None
        if sample is None:
            sample = await store.call(
                store.sample_for_task, self.engine, task_id, project.project_id
            )
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
        latest = await store.call(store.latest_version, self.engine, ls_id, site_id)
        if latest is not None and (
            latest.annotation_id == annotation_id or store.as_utc(latest.updated_at) >= updated_at
        ):
            return None
        converted = convert.convert_annotation(annotation, sample.width, sample.height)
        annotator = await self.registry.annotator(project, annotation.get("completed_by"))
        pushed = store.as_utc(sample.pushed_at) if sample.pushed_at else updated_at
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
            tool_project_id=project.project_id,
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
        await store.call(store.record_annotation, self.engine, record, event.supersedes)
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
        await store.call(store.mark_published, self.engine, annotation_id)

    async def republish_pending(self) -> int:
        """Publish what was recorded but not acknowledged before a crash (same event ids)."""
        pending = await store.call(store.unpublished, self.engine)
        for row in pending:
            await self._publish_record(
                row.annotation_id, AnnotationCompleted.model_validate_json(row.event_json)
            )
        return len(pending)

    async def on_deleted(self, site_id: str, ls_annotation_ids: list[int]) -> int:
        """Annotations deleted in Label Studio leave the progress figures (no event)."""
        return await store.call(store.mark_deleted, self.engine, site_id, ls_annotation_ids)

    async def reconcile(self, site_id: str) -> int:
        """Poll the site's project and emit every annotation version not emitted yet."""
        project = await self.registry.site(site_id)
        emitted = 0
        async for task in project.client.iter_tasks(project.project_id):
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
        sampled = await store.call(store.sampled_sites, self.engine)
        sites = set(self.settings.sites) | set(self.registry.known_sites()) | sampled
        total = 0
        for site_id in sorted(sites):
            total += await self.reconcile(site_id)
        return total
