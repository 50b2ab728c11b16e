"""Decode pool + ONNX Runtime executor + event assembly: a list of ``ImageCaptured`` in, predictions
(and per-item failures) out. No Kafka here, so a benchmark times exactly the service's own
decode + inference code (:func:`predict_events` with :func:`single_model`).

Threads, not the event loop, do the heavy work: PNG fetch + decode in ``decode`` (many threads;
OpenCV releases the GIL), ONNX Runtime in ``inference`` (few threads; each run uses ORT's own
intra-op pool). The event loop stays free for Kafka heartbeats and fetches.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

from defectloop.common.blobstore import BlobStore
from defectloop.common.errors import DefectloopError, InvalidInputError, TransientError
from defectloop.common.events import (
    ImageCaptured,
    ModelRole,
    PredictionMade,
    ScoredBox,
    decision_id_for,
    prediction_id_for,
    utc_now,
)
from defectloop.common.logging import get_logger
from defectloop.inference.decode import GrayImage, load_image
from defectloop.vision.decode import Detection
from defectloop.vision.runtime import Detector, ImagePrediction

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class ServedModel:
    """A loaded model serving one site in one role."""

    site_id: str
    role: ModelRole
    name: str
    version: str
    sha256: str
    artifact_uri: str
    detector: Detector = field(repr=False, compare=False)
    loaded_at: datetime = field(default_factory=utc_now, compare=False)

    def describe(self) -> dict[str, object]:
        return {
            "site_id": self.site_id,
            "role": self.role.value,
            "model_name": self.name,
            "model_version": self.version,
            "sha256": self.sha256,
            "artifact_uri": self.artifact_uri,
            "providers": self.detector.providers,
            "loaded_at": self.loaded_at.isoformat(),
        }


ModelsFor = Callable[[str], Sequence[ServedModel]]
"""Models serving a site: the champion first, then shadows/challengers; empty = no model."""


def single_model(
    detector: Detector,
    *,
    name: str | None = None,
    version: str | None = None,
    role: ModelRole = ModelRole.CHAMPION,
) -> ModelsFor:
    """Serve every site with one detector (benchmarks, tools)."""
    manifest = detector.manifest
    served: dict[str, tuple[ServedModel, ...]] = {}

    def models_for(site_id: str) -> Sequence[ServedModel]:
        if site_id not in served:
            served[site_id] = (
                ServedModel(
                    site_id=site_id,
                    role=role,
                    name=name or manifest.name,
                    version=version or manifest.version,
                    sha256=manifest.sha256,
                    artifact_uri="",
                    detector=detector,
                ),
            )
        return served[site_id]

    return models_for


class Executors:
    """The decode pool and the ONNX Runtime pool (shut down with :meth:`shutdown`)."""

    def __init__(self, *, decode_workers: int, inference_workers: int = 1) -> None:
        self.decode = ThreadPoolExecutor(decode_workers, thread_name_prefix="decode")
        self.inference = ThreadPoolExecutor(inference_workers, thread_name_prefix="ort")

    def shutdown(self) -> None:
        self.decode.shutdown(wait=True, cancel_futures=True)
        self.inference.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """Input ``index`` of the batch cannot be predicted, for ``error.reason``."""

    index: int
    error: DefectloopError


@dataclass(frozen=True, slots=True)
class BatchResult:
    predictions: list[PredictionMade]
    """In input order; per image the champion first, then the other roles."""
    failures: list[ItemFailure]
    decode_ms: float
    model_ms: dict[tuple[str, str], float]
    """Model time per (model version, role) group, milliseconds."""

    @property
    def images_predicted(self) -> int:
        return len({p.image_id for p in self.predictions if p.role == ModelRole.CHAMPION})


@dataclass(frozen=True, slots=True)
class _Timed:
    predictions: list[ImagePrediction | DefectloopError]
    ms: float


def _run_model(detector: Detector, images: Sequence[GrayImage]) -> _Timed:
    """One ONNX run for the group; if it fails, each image alone so one bad input fails alone."""
    start = time.perf_counter()
    try:
        results: list[ImagePrediction | DefectloopError] = list(detector.predict(images))
    except Exception as exc:
        if len(images) == 1:
            results = [_inference_error(exc)]
        else:
            log.warning("model_batch_failed_retrying_singly", size=len(images), error=str(exc))
            results = []
            for image in images:
                try:
                    results.extend(detector.predict([image]))
                except Exception as single:
                    results.append(_inference_error(single))
    return _Timed(results, (time.perf_counter() - start) * 1000.0)


def _inference_error(exc: Exception) -> DefectloopError:
    if isinstance(exc, DefectloopError):
        return exc
    return InvalidInputError(f"{type(exc).__name__}: {exc}", reason="inference_failed")


def _boxes(detections: Sequence[Detection]) -> tuple[ScoredBox, ...]:
    return tuple(
        ScoredBox(
            label=d.label,
            x=max(0.0, float(d.x)),
            y=max(0.0, float(d.y)),
            w=max(0.0, float(d.w)),
            h=max(0.0, float(d.h)),
            score=min(1.0, max(0.0, float(d.score))),
        )
        for d in detections
    )


def assemble(
    event: ImageCaptured,
    model: ServedModel,
    result: ImagePrediction,
    *,
    queue_latency_ms: float,
    inference_latency_ms: float,
) -> PredictionMade:
    """The ``prediction.made`` event of one model for one image."""
    return PredictionMade(
        site_id=event.site_id,
        camera_id=event.camera_id,
        line_id=event.line_id,
        prediction_id=prediction_id_for(event.image_id, model.version, model.role.value),
        # Not the version: a batch redelivered after a crash may be predicted again by a model
        # switched in meanwhile, and the MES must see that as the same decision.
        decision_id=decision_id_for(event.image_id, model.role.value),
        image_id=event.image_id,
        sha256=event.sha256,
        blob_uri=event.blob_uri,
        width=event.width,
        height=event.height,
        boxes=_boxes(result.detections),
        defective=result.defective,
        decision_score=min(1.0, max(0.0, float(result.max_score))),
        decision_threshold=float(result.decision_threshold),
        model_name=model.name,
        model_version=model.version,
        role=model.role,
        outlier_score=max(0.0, float(result.outlier_score or 0.0)),
        outlier=result.outlier,
        captured_at=event.captured_at,
        queue_latency_ms=max(0.0, queue_latency_ms),
        inference_latency_ms=max(0.0, inference_latency_ms),
    )


async def decode_events(
    events: Sequence[ImageCaptured],
    store: BlobStore,
    executor: ThreadPoolExecutor,
    *,
    max_pixels: int,
    max_bytes: int,
) -> list[GrayImage | DefectloopError]:
    """Fetch + decode every event concurrently in ``executor``; failures stay per item.

    Raises :class:`TransientError` (the blob store is down: the whole batch must be retried).
    """
    loop = asyncio.get_running_loop()
    load = partial(load_image, store=store, max_pixels=max_pixels, max_bytes=max_bytes)
    futures = [loop.run_in_executor(executor, load, event) for event in events]
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    decoded: list[GrayImage | DefectloopError] = []
    for outcome in outcomes:
        if isinstance(outcome, TransientError):
            raise outcome
        if isinstance(outcome, DefectloopError):
            decoded.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            decoded.append(outcome)
    return decoded


async def predict_events(
    events: Sequence[ImageCaptured],
    store: BlobStore,
    models_for: ModelsFor,
    executors: Executors,
    *,
    max_pixels: int = 50_000_000,
    max_bytes: int = 64 * 1024 * 1024,
) -> BatchResult:
    """Predict a batch: route each image to its site's models, decode, run, assemble.

    ``models_for`` must be a snapshot (the same models for the whole call): a batch is predicted
    entirely by one model version per site and role. Sites with no champion fail with
    ``no_model``; images that cannot be fetched or decoded fail with their decode reason; a
    shadow/challenger that fails is logged and skipped (it never costs the champion's decision).
    """
    started = utc_now()
    queue_ms = [(started - e.occurred_at).total_seconds() * 1000.0 for e in events]
    failures: dict[int, DefectloopError] = {}
    routed: dict[int, Sequence[ServedModel]] = {}
    for i, event in enumerate(events):
        models = models_for(event.site_id)
        if not models or models[0].role != ModelRole.CHAMPION:
            failures[i] = InvalidInputError(
                f"no champion model serves site {event.site_id!r}",
                reason="no_model",
                hint="deploy one (model.deployed, role=champion)",
            )
        else:
            routed[i] = models

    t0 = time.perf_counter()
    todo = sorted(routed)
    decoded = await decode_events(
        [events[i] for i in todo],
        store,
        executors.decode,
        max_pixels=max_pixels,
        max_bytes=max_bytes,
    )
    decode_ms = (time.perf_counter() - t0) * 1000.0

    images: dict[int, GrayImage] = {}
    for i, outcome in zip(todo, decoded, strict=True):
        if isinstance(outcome, DefectloopError):
            failures[i] = outcome
        else:
            images[i] = outcome

    # One ONNX run per detector: sites served by the same bundle (same loaded session) and role
    # share a run; champions and shadows run separately.
    groups: dict[tuple[int, ModelRole], list[tuple[int, ServedModel]]] = {}
    for i in sorted(images):
        for model in routed[i]:
            groups.setdefault((id(model.detector), model.role), []).append((i, model))

    loop = asyncio.get_running_loop()
    runs = await asyncio.gather(
        *(
            loop.run_in_executor(
                executors.inference,
                _run_model,
                members[0][1].detector,
                [images[i] for i, _ in members],
            )
            for members in groups.values()
        )
    )

    per_image: dict[int, list[PredictionMade]] = {}
    model_ms: dict[tuple[str, str], float] = {}
    for members, timed in zip(groups.values(), runs, strict=True):
        for (i, model), result in zip(members, timed.predictions, strict=True):
            model_ms[(model.version, model.role.value)] = timed.ms
            if isinstance(result, DefectloopError):
                if model.role == ModelRole.CHAMPION:
                    failures[i] = result
                else:
                    log.warning(
                        "shadow_prediction_failed",
                        site_id=model.site_id,
                        role=model.role.value,
                        model_version=model.version,
                        image_id=events[i].image_id,
                        error=str(result),
                    )
                continue
            per_image.setdefault(i, []).append(
                assemble(
                    events[i],
                    model,
                    result,
                    queue_latency_ms=queue_ms[i],
                    inference_latency_ms=decode_ms + timed.ms,
                )
            )
    for preds in per_image.values():
        preds.sort(key=lambda p: p.role != ModelRole.CHAMPION)  # champion first, stable

    predictions: list[PredictionMade] = []
    for i in range(len(events)):
        if i in failures:
            continue  # a failed champion means no prediction at all for the image
        predictions.extend(per_image.get(i, ()))
    return BatchResult(
        predictions=predictions,
        failures=[ItemFailure(i, failures[i]) for i in sorted(failures)],
        decode_ms=decode_ms,
        model_ms=model_ms,
    )
