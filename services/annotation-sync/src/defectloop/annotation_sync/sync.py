"""The annotation loop, assembled: project registry, sampling + push, pull, label requests.

Each part lives in its own module (``projects``, ``push``, ``pull``, ``label_requests``); this
class wires them to one database engine and one publisher, and is what the Kafka handlers, the
HTTP API and the poll loop talk to.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine

from defectloop.annotation_sync import label_requests, store
from defectloop.annotation_sync.projects import ClientFactory, ProjectRegistry
from defectloop.annotation_sync.pull import AnnotationPuller, Publish
from defectloop.annotation_sync.push import Sampler, TaskPusher
from defectloop.annotation_sync.settings import AnnotationSyncSettings
from defectloop.common import tracing
from defectloop.common.events import AnnotationCompleted, LabelsRequested, PredictionMade
from defectloop.common.logging import get_logger
from defectloop.common.metrics import ANNOTATION_TASKS

log = get_logger(__name__)

__all__ = ["AnnotationSync", "ClientFactory", "Publish"]


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
        self._clock = clock or (lambda: datetime.now(UTC))
        self.registry = ProjectRegistry(settings, client_factory)
        self.pusher = TaskPusher(settings, engine, self.registry, clock=self._clock)
        self.sampler = Sampler(settings, engine, on_sampled=self.pusher.wake, clock=self._clock)
        self.puller = AnnotationPuller(settings, engine, self.registry, publish)
        self.tracer = tracing.tracer_for(settings, __name__)

    async def aclose(self) -> None:
        await self.registry.aclose()

    # --- Kafka ----------------------------------------------------------------------------

    async def on_prediction(self, p: PredictionMade) -> store.Sample | None:
        """Sample ``p`` (or not) as a pending task; the pusher pushes it. No Label Studio call.

        The decision is a span in the image's trace (the prediction's consumer span is its
        parent): ``defectloop trace`` shows whether the image went to the annotators, and why.
        """
        attributes = {tracing.ATTR_SITE: p.site_id, tracing.ATTR_IMAGE: p.image_id}
        with self.tracer.start_as_current_span("annotation.sample", attributes=attributes) as span:
            sample = await self.sampler.on_prediction(p)
            if sample is None:
                span.set_attribute(tracing.ATTR_OUTCOME, "not_sampled")
            else:
                span.set_attributes(
                    {tracing.ATTR_OUTCOME: "sampled", tracing.ATTR_REASON: sample.reason}
                )
                ANNOTATION_TASKS.labels(p.site_id, sample.reason).inc()
            return sample

    async def on_labels_requested(self, event: LabelsRequested) -> bool:
        """Record the monitor's request once per ``request_id``; False for a redelivery."""
        row = label_requests.from_event(event, self._clock())
        new = await store.call(store.record_label_request, self.engine, row)
        log.info(
            "labels_requested" if new else "labels_request_duplicate",
            site_id=event.site_id,
            request_id=event.request_id,
            random_share=event.random_share,
            target_labels=event.target_labels,
            expires_at=event.expires_at.isoformat(),
        )
        return new

    # --- push and pull (delegates) ----------------------------------------------------------

    def image_link(self, site: str, image_id: str) -> str:
        return self.pusher.image_link(site, image_id)

    async def push_pending(self) -> int:
        return await self.pusher.push_pending()

    async def on_annotation(
        self, site_id: str, task: dict[str, Any], annotation: dict[str, Any]
    ) -> AnnotationCompleted | None:
        data = task.get("data") or {}
        attributes = {tracing.ATTR_SITE: site_id, tracing.ATTR_IMAGE: str(data.get("image_id", ""))}
        with self.tracer.start_as_current_span("annotation.arrival", attributes=attributes) as span:
            event = await self.puller.on_annotation(site_id, task, annotation)
            if event is None:
                span.set_attribute(tracing.ATTR_OUTCOME, "ignored")
            else:
                span.set_attributes(
                    {
                        tracing.ATTR_OUTCOME: f"annotation_{event.status.value}",
                        tracing.ATTR_ANNOTATOR: event.annotator,
                    }
                )
            return event

    async def on_deleted(self, site_id: str, ls_annotation_ids: list[int]) -> int:
        return await self.puller.on_deleted(site_id, ls_annotation_ids)

    async def reconcile(self, site_id: str) -> int:
        return await self.puller.reconcile(site_id)

    async def reconcile_all(self) -> int:
        return await self.puller.reconcile_all()

    async def republish_pending(self) -> int:
        return await self.puller.republish_pending()

    # --- views ----------------------------------------------------------------------------

    def request_states(self, site: str) -> list[label_requests.RequestState]:
        """The site's label requests with progress (blocking; the API runs it in a thread)."""
        return self.sampler.request_states(site)
