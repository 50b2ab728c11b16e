"""The ingest flow for one upload, independent of HTTP.

validate (PNG, limits) -> measure quality -> store bytes (content-addressed) -> record the image
(with its event, ``published=False``) -> publish ``image.captured`` and wait for the ack -> mark
published. A repeat of the same bytes for the same camera finds the record: already published =
"duplicate" (nothing new is sent); recorded but never acknowledged = the stored event is published
now. Validation and quality failures record ``image.rejected`` (published by the outbox's
republisher, :mod:`defectloop.ingest.outbox`, which also publishes images whose upload got a 503)
and raise :class:`RejectionError`. CPU work (decode, quality) and blocking I/O (SQL, blob store)
run in worker threads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import anyio
from anyio import to_thread

from defectloop.common import tracing
from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import (
    DefectloopError,
    InvalidInputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from defectloop.common.events import (
    ImageCaptured,
    ImageRejected,
    QualityMetrics,
    RejectReason,
    image_id_for,
    sha256_hex,
    utc_now,
)
from defectloop.common.logging import get_logger
from defectloop.common.metrics import IMAGES_REJECTED
from defectloop.ingest import png, quality
from defectloop.ingest.outbox import Republisher
from defectloop.ingest.records import ImageRecord, ImageStore, RejectionRecord
from defectloop.ingest.settings import IngestSettings, QualityFloor

log = get_logger(__name__)

Status = Literal["accepted", "duplicate"]

HINTS: dict[RejectReason, str] = {
    RejectReason.TOO_LARGE: "send at most max_body_bytes; check the camera's resolution",
    RejectReason.NOT_PNG: "encode the frame as PNG",
    RejectReason.WRONG_CONTENT_TYPE: "send the body with Content-Type: image/png",
    RejectReason.EMPTY: "send the PNG bytes as the request body",
    RejectReason.TRUNCATED: "the upload was cut short: send the whole file again",
    RejectReason.UNDECODABLE: "the PNG is corrupt: check the gateway's encoder",
    RejectReason.PIXEL_BOMB: "the declared size exceeds the camera limits (max_pixels, max_side)",
    RejectReason.UNSUPPORTED_FORMAT: "send 8/16-bit gray or RGB(A), or configure accepted_modes",
    RejectReason.UNIFORM_FRAME: "the camera sees nothing: check the lens, lighting and cabling",
    RejectReason.TOO_BLURRY: "refocus or clean the camera",
    RejectReason.TOO_DARK: "check the lighting and exposure",
    RejectReason.TOO_BRIGHT: "check the lighting and exposure",
}


class RejectionError(InvalidInputError):
    """An upload refused for a validation or quality reason (already reported on Kafka): 422."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail, reason=reason, hint=HINTS[reason])
        self.detail = detail


class TooLargeRejectionError(RejectionError, PayloadTooLargeError):
    """The body is larger than ``max_body_bytes``: 413."""


class MediaTypeRejectionError(RejectionError, UnsupportedMediaTypeError):
    """The body is not a PNG, or not declared as one: 415."""


_REJECTION_TYPE: dict[RejectReason, type[RejectionError]] = {
    RejectReason.TOO_LARGE: TooLargeRejectionError,
    RejectReason.NOT_PNG: MediaTypeRejectionError,
    RejectReason.WRONG_CONTENT_TYPE: MediaTypeRejectionError,
}


def rejection(reason: RejectReason, detail: str) -> RejectionError:
    """The error for ``reason``; its class carries the HTTP status (``errors.http_status``)."""
    return _REJECTION_TYPE.get(reason, RejectionError)(reason, detail)


@dataclass(frozen=True)
class Outcome:
    image_id: str
    status: Status


@dataclass(frozen=True)
class _Analysis:
    header: png.PngHeader
    metrics: QualityMetrics
    fingerprint: bytes


class Ingestor:
    def __init__(
        self,
        settings: IngestSettings,
        *,
        store: ImageStore,
        blobs: BlobStore,
        outbox: Republisher,
    ) -> None:
        self.settings = settings
        self.store = store
        self.blobs = blobs
        self.outbox = outbox
        self.floors = settings.load_quality_floors()
        self.limits = png.PngLimits(
            max_pixels=settings.max_pixels,
            max_side=settings.max_side,
            accepted_modes=frozenset(settings.accepted_modes),
            max_text_chunk_bytes=settings.max_text_chunk_bytes,
            max_chunks=settings.max_chunks,
        )
        self.cpu = anyio.CapacityLimiter(settings.cpu_workers)
        self.tracer = tracing.tracer_for(settings, __name__)

    def floor_for(self, site_id: str) -> QualityFloor:
        return self.floors.get(site_id, self.settings.quality_floor)

    async def reject(
        self,
        site_id: str,
        camera_id: str,
        reason: RejectReason,
        detail: str,
        *,
        sha256: str | None = None,
        size_bytes: int | None = None,
    ) -> RejectionError:
        """Record ``image.rejected`` for the republisher and return the exception to raise.

        The client's answer depends on neither Kafka nor the database: a bad upload stays bad.
        The event is published by the outbox (at once if Kafka is up, else when it returns); if
        even recording it fails, it is logged as lost (``image_rejected_unrecorded``).
        """
        event = ImageRejected(
            site_id=site_id,
            camera_id=camera_id,
            reason=reason,
            detail=detail[:2000],
            sha256=sha256,
            size_bytes=size_bytes,
        )
        IMAGES_REJECTED.labels(site_id, reason.value).inc()
        # A refused upload is an outcome, not a fault of the service: no error status.
        tracing.current_span().set_attributes(
            {tracing.ATTR_OUTCOME: "rejected", tracing.ATTR_REASON: reason.value}
        )
        log.info(
            "image_rejected",
            site_id=site_id,
            camera_id=camera_id,
            reason=reason.value,
            detail=detail[:300],
        )
        record = RejectionRecord(
            event_id=event.event_id,
            site_id=site_id,
            camera_id=camera_id,
            reason=reason.value,
            event_json=event.model_dump_json(),
        )
        try:
            await to_thread.run_sync(self.store.add_rejection, record)
        except DefectloopError as exc:
            log.error(
                "image_rejected_unrecorded", site_id=site_id, reason=reason.value, error=str(exc)
            )
        self.outbox.kick()
        return rejection(reason, detail)

    def _analyse(self, data: bytes, previous: bytes | None) -> _Analysis:
        decoded = png.decode(data, self.limits)
        gray = quality.to_gray8(decoded.pixels)
        fingerprint = quality.fingerprint(gray)
        near_duplicate = (
            previous is not None
            and quality.fingerprint_distance(fingerprint, previous)
            < self.settings.near_duplicate_threshold
        )
        metrics = quality.measure(
            gray,
            uniform_max_contrast=self.settings.uniform_max_contrast,
            flat_tile_max_std=self.settings.flat_tile_max_std,
            near_duplicate=near_duplicate,
        )
        return _Analysis(header=decoded.header, metrics=metrics, fingerprint=fingerprint)

    async def ingest(
        self,
        site_id: str,
        camera_id: str,
        data: bytes,
        *,
        captured_at: datetime | None = None,
        line_id: str | None = None,
    ) -> Outcome:
        if not data:
            raise await self.reject(site_id, camera_id, RejectReason.EMPTY, "the body is empty")
        digest = sha256_hex(data)
        image_id = image_id_for(site_id, camera_id, digest)
        tracing.current_span().set_attributes(
            {
                tracing.ATTR_SITE: site_id,
                tracing.ATTR_CAMERA: camera_id,
                tracing.ATTR_IMAGE: image_id,
            }
        )
        existing = await to_thread.run_sync(self.store.get, image_id)
        if existing is not None:
            return await self._deliver(existing, fresh=False)

        previous = await to_thread.run_sync(self.store.previous_fingerprint, site_id, camera_id)
        with self.tracer.start_as_current_span("ingest.validate"):
            try:
                analysis = await to_thread.run_sync(self._analyse, data, previous, limiter=self.cpu)
            except png.PngRejectedError as exc:
                raise await self.reject(
                    site_id, camera_id, exc.reason, exc.detail, sha256=digest, size_bytes=len(data)
                ) from None
            violation = quality.floor_violation(analysis.metrics, self.floor_for(site_id))
        if violation is not None:
            reason, detail = violation
            raise await self.reject(
                site_id, camera_id, reason, detail, sha256=digest, size_bytes=len(data)
            )

        store_span = self.tracer.start_span("ingest.store")
        with tracing.in_span(store_span):
            blob_uri = await to_thread.run_sync(lambda: self.blobs.put(data, suffix=".png"))
        event = ImageCaptured(
            site_id=site_id,
            camera_id=camera_id,
            line_id=line_id,
            image_id=image_id,
            sha256=digest,
            blob_uri=blob_uri,
            captured_at=captured_at or utc_now(),
            width=analysis.header.width,
            height=analysis.header.height,
            bit_depth=analysis.header.bit_depth,
            quality=analysis.metrics,
            source_mode=analysis.header.mode,
        )
        record = ImageRecord(
            image_id=image_id,
            site_id=site_id,
            camera_id=camera_id,
            sha256=digest,
            blob_uri=blob_uri,
            width=analysis.header.width,
            height=analysis.header.height,
            quality=analysis.metrics.model_dump(),
            event_json=event.model_dump_json(),
            # The request's span: whoever publishes (this request or the republisher), the
            # image.captured record carries this trace.
            traceparent=tracing.traceparent(),
            tracestate=tracing.current_span().get_span_context().trace_state.to_header() or None,
        )
        with tracing.in_span(store_span, end=True):
            stored = await to_thread.run_sync(self.store.insert, record)
            await to_thread.run_sync(
                self.store.set_fingerprint, site_id, camera_id, analysis.fingerprint, image_id
            )
        return await self._deliver(stored, fresh=stored is record)

    async def _deliver(self, record: ImageRecord, *, fresh: bool) -> Outcome:
        """Publish the record's event unless Kafka already acknowledged it; an image recorded by
        an earlier request (published or not by now) is a duplicate."""
        # BrokerUnavailableError -> 503; the record is kept and the republisher publishes it.
        # A record this request inserted is accepted even when the republisher's round published
        # it first (the race the stored trace context covers): only a repeat is a duplicate.
        published_here = not record.published and await self.outbox.publish_image(record)
        if not (published_here or fresh):
            tracing.current_span().set_attribute(tracing.ATTR_OUTCOME, "duplicate")
            log.info("image_duplicate", image_id=record.image_id, site_id=record.site_id)
            return Outcome(record.image_id, "duplicate")
        tracing.current_span().set_attribute(tracing.ATTR_OUTCOME, "accepted")
        log.info(
            "image_accepted",
            image_id=record.image_id,
            site_id=record.site_id,
            camera_id=record.camera_id,
            retried_publish=not fresh,
        )
        return Outcome(record.image_id, "accepted")
