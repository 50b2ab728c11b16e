"""Ingest's outbox publisher: what was recorded reaches Kafka, whether or not the gateway retries.

Every outcome is recorded first (an accepted image with its ``image.captured``, a rejection with
its ``image.rejected``; :mod:`defectloop.ingest.records`). An upload publishes its own image and
answers 202 once Kafka acknowledged it, or 503 if Kafka did not in time; a rejection is answered at
once and left to the republisher. The :class:`Republisher` runs in the background once Kafka is
connected: it publishes every unacknowledged record, oldest first (rejections in the order they
were recorded), marks each published after the ack, and while Kafka is down retries every
``republish_interval_s``. So nothing recorded stays unpublished after Kafka returns.

A record is published under a per-image lock shared with the upload path, so a request and the
republisher do not both publish the same image from this process. Either may win that race (the
republisher's round can find an image between its insert and the request's publish), so an image
record keeps its request's W3C trace context (``traceparent``/``tracestate``): the republisher
publishes inside an ``ingest.republish`` span, child of that context and tagged
``defectloop.republish``, and the image's trace goes on unbroken whoever published it. A record
without one (recorded by an older ingest) starts a trace of its own, tagged with the image id. Across a crash or a lost
acknowledgement an event can still be published twice, always with the same ``event_id`` (and
``image_id``): consumers dedupe on them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from enum import Enum

from anyio import to_thread

from defectloop.common import tracing
from defectloop.common.errors import BrokerUnavailableError, DefectloopError
from defectloop.common.events import ImageCaptured, ImageRejected
from defectloop.common.logging import get_logger
from defectloop.common.metrics import IMAGES_ACCEPTED
from defectloop.common.retry import woken
from defectloop.ingest.publisher import EventPublisher
from defectloop.ingest.records import ImageRecord, ImageStore

log = get_logger(__name__)


class _Round(Enum):
    IDLE = "idle"  # nothing left
    MORE = "more"  # a full page published: look again at once
    FAILED = "failed"  # Kafka (or the database) refused: wait, then retry


class ImageLocks:
    """One lock per image id being published, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, image_id: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(image_id, (asyncio.Lock(), 0))
        self._locks[image_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[image_id]
            if users == 1:
                del self._locks[image_id]
            else:
                self._locks[image_id] = (lock, users - 1)


class Republisher:
    """Publishes the outbox until empty; woken by :meth:`kick`, else every ``interval_s``."""

    def __init__(
        self,
        store: ImageStore,
        publisher: EventPublisher,
        locks: ImageLocks,
        *,
        interval_s: float,
        page: int = 100,
        tracer: tracing.Tracer | None = None,
    ) -> None:
        self.tracer = tracer
        self.store = store
        self.publisher = publisher
        self.locks = locks
        self.interval_s = interval_s
        self.page = page
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def kick(self) -> None:
        """Something was recorded or failed to publish: look now."""
        self._wake.set()

    async def start(self) -> None:
        # The shell runs this after Kafka connected, in its connect task; a stop can come first
        # (the app stopped while connecting) and must not leave a publisher running after it.
        if self._stopped or self._task is not None:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="ingest-republisher")

    async def stop(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        # The flag, not only the cancel, ends the loop: a cancel that lands while a publish is
        # timing out comes back as BrokerUnavailableError and would otherwise be swallowed.
        while not self._stopped:
            self._wake.clear()
            outcome = await self.publish_pending()
            if outcome is _Round.MORE:
                continue
            if outcome is _Round.FAILED:
                await asyncio.sleep(self.interval_s)  # Kafka down: kicks would only hammer it
                continue
            await woken(self._wake, self.interval_s)

    async def publish_pending(self) -> _Round:
        """One pass over the outbox: images first (gateways wait for them), then rejections."""
        try:
            images = await to_thread.run_sync(self.store.unpublished, self.page)
            for record in images:
                await self.publish_image(record, republish=True)
            rejections = await to_thread.run_sync(self.store.unpublished_rejections, self.page)
            for rejection in rejections:
                await self.publisher.publish(
                    ImageRejected.model_validate_json(rejection.event_json)
                )
                await to_thread.run_sync(self.store.mark_rejection_published, rejection.event_id)
        except DefectloopError as exc:  # BrokerUnavailableError, or the database failing
            log.warning("outbox_publish_failed", reason=exc.reason, error=str(exc))
            return _Round.FAILED
        if images or rejections:
            log.info("outbox_published", images=len(images), rejections=len(rejections))
        full = len(images) == self.page or len(rejections) == self.page
        return _Round.MORE if full else _Round.IDLE

    async def publish_image(self, record: ImageRecord, *, republish: bool = False) -> bool:
        """Publish ``record``'s event unless already acknowledged (by anyone); True if this call
        published it. Raises :class:`BrokerUnavailableError` when Kafka does not acknowledge.

        The request publishes in its own span; the republisher (``republish``) in a span under
        the trace context recorded with the image, so the event carries the request's trace."""
        async with self.locks.hold(record.image_id):
            current = await to_thread.run_sync(self.store.get, record.image_id)
            if current is None or current.published:
                return False
            with self._span(current) if republish else contextlib.nullcontext():
                try:
                    await self.publisher.publish(
                        ImageCaptured.model_validate_json(current.event_json)
                    )
                except BrokerUnavailableError:
                    self.kick()
                    raise
            await to_thread.run_sync(self.store.mark_published, record.image_id)
            IMAGES_ACCEPTED.labels(current.site_id).inc()
            return True

    @contextlib.contextmanager
    def _span(self, record: ImageRecord) -> Iterator[None]:
        """An ``ingest.republish`` span in the image's recorded trace, current while it runs (the
        telemetry middleware injects the current span's context into the record's headers)."""
        if self.tracer is None:
            yield
            return
        carrier = {"traceparent": record.traceparent or "", "tracestate": record.tracestate or ""}
        span = self.tracer.start_span(
            "ingest.republish",
            context=tracing.headers_context({k: v for k, v in carrier.items() if v}),
            attributes={
                tracing.ATTR_REPUBLISH: True,
                tracing.ATTR_SITE: record.site_id,
                tracing.ATTR_CAMERA: record.camera_id,
                tracing.ATTR_IMAGE: record.image_id,
            },
        )
        with tracing.in_span(span, end=True):
            try:
                yield
            except DefectloopError as exc:
                tracing.mark_failed(span, exc.reason, str(exc))
                raise
