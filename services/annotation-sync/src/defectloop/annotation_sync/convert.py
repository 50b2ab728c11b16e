"""Label Studio <-> pixel boxes, and Label Studio annotations to ``annotation.completed`` fields.

Label Studio stores rectangles as percentages (0-100) of ``original_width``/``original_height``,
top-left anchored; the project config forbids rotation, so no rotation is expected (a rotated
result is converted to its axis-aligned hull all the same).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import AnnotationStatus, Box, ScoredBox

CLASSES: tuple[str, ...] = ("scratch", "spot", "crack")
FROM_NAME = "defect"
TO_NAME = "image"
CANNOT_ANNOTATE = "cannot_annotate"
SKIP_REASONS: tuple[str, ...] = ("blurry", "obstructed", "wrong_part", "bad_exposure", "other")
PREDICTION_MODEL_PREFIX = "defectloop"


def label_config(classes: Sequence[str] = CLASSES) -> str:
    """The project's labeling interface: boxes per class, plus a "could not annotate" reason."""
    labels = "\n".join(f'    <Label value="{c}"/>' for c in classes)
    reasons = "\n".join(f'    <Choice value="{r}"/>' for r in SKIP_REASONS)
    return f"""<View>
  <Header value="Draw a box around every defect. No defect: submit with no box."/>
  <Image name="{TO_NAME}" value="$image" zoom="true" zoomControl="true"/>
  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}" canRotate="false" strokeWidth="2">
{labels}
  </RectangleLabels>
  <Header value="Could not annotate? Pick a reason, then Skip."/>
  <Choices name="{CANNOT_ANNOTATE}" toName="{TO_NAME}" choice="single" showInline="true">
{reasons}
  </Choices>
</View>"""


def to_percent_result(
    box: Box, width: int, height: int, *, region_id: str, score: float | None = None
) -> dict[str, Any]:
    """One pixel box as a Label Studio rectangle result."""
    result: dict[str, Any] = {
        "id": region_id,
        "type": "rectanglelabels",
        "from_name": FROM_NAME,
        "to_name": TO_NAME,
        "original_width": width,
        "original_height": height,
        "image_rotation": 0,
        "value": {
            "x": box.x / width * 100.0,
            "y": box.y / height * 100.0,
            "width": box.w / width * 100.0,
            "height": box.h / height * 100.0,
            "rotation": 0,
            "rectanglelabels": [box.label],
        },
    }
    if score is not None:
        result["score"] = score
    return result


def prediction_payload(
    boxes: Iterable[ScoredBox], width: int, height: int, model_version: str
) -> dict[str, Any]:
    """Pre-annotations for a task: the model's boxes, editable by the annotator."""
    items = list(boxes)
    return {
        "model_version": f"{PREDICTION_MODEL_PREFIX}:{model_version}",
        "score": max((b.score for b in items), default=0.0),
        "result": [
            to_percent_result(b, width, height, region_id=f"p{i}", score=b.score)
            for i, b in enumerate(items)
        ],
    }


def from_percent_result(result: Mapping[str, Any], width: int, height: int) -> Box:
    """A Label Studio rectangle as a pixel box (clamped to the image)."""
    try:
        value = result["value"]
        w_img = float(result.get("original_width") or width)
        h_img = float(result.get("original_height") or height)
        x = float(value["x"]) * w_img / 100.0
        y = float(value["y"]) * h_img / 100.0
        w = float(value["width"]) * w_img / 100.0
        h = float(value["height"]) * h_img / 100.0
        labels = value.get("rectanglelabels") or []
        label = str(labels[0])
        angle = math.radians(float(value.get("rotation") or 0.0))
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"malformed rectangle result: {exc!r}") from exc
    if angle:
        c, s = math.cos(angle), math.sin(angle)
        pts = [(x, y), (x + w * c, y + w * s), (x + w * c - h * s, y + w * s + h * c)]
        pts.append((x - h * s, y + h * c))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x, y, w, h = min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    x0, y0 = min(max(x, 0.0), w_img), min(max(y, 0.0), h_img)
    x1, y1 = min(max(x + w, 0.0), w_img), min(max(y + h, 0.0), h_img)
    return Box(label=label, x=x0, y=y0, w=x1 - x0, h=y1 - y0)


@dataclass(frozen=True)
class Converted:
    """What one Label Studio annotation says, in our terms."""

    status: AnnotationStatus
    boxes: tuple[Box, ...]
    skip_reason: str | None


def convert_annotation(annotation: Mapping[str, Any], width: int, height: int) -> Converted:
    """Boxes in pixels, or a skip with its reason.

    A skip is Label Studio's ``was_cancelled`` (the Skip button), or a submitted annotation that
    picks a "could not annotate" reason; the reason is the chosen choice (``unspecified`` if none).
    """
    results = annotation.get("result") or []
    if not isinstance(results, list):
        raise InvalidInputError("annotation result must be a list")
    boxes: list[Box] = []
    reason: str | None = None
    for r in results:
        if not isinstance(r, Mapping):
            raise InvalidInputError("annotation result items must be objects")
        kind = r.get("type")
        if kind == "rectanglelabels":
            boxes.append(from_percent_result(r, width, height))
        elif kind == "choices" and r.get("from_name") == CANNOT_ANNOTATE:
            choices = (r.get("value") or {}).get("choices") or []
            reason = str(choices[0]) if choices else "unspecified"
    if annotation.get("was_cancelled") or reason is not None:
        return Converted(AnnotationStatus.SKIPPED, (), reason or "unspecified")
    return Converted(AnnotationStatus.COMPLETED, tuple(boxes), None)


def parse_time(value: Any) -> datetime:
    """Label Studio's ISO-8601 UTC timestamps (``...Z``)."""
    if not isinstance(value, str) or not value:
        raise InvalidInputError(f"missing or malformed timestamp: {value!r}")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidInputError(f"malformed timestamp: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def annotation_version_id(ls_annotation_id: int, updated_at: datetime) -> str:
    """Our annotation id: the tool's annotation id plus its version (``updated_at``)."""
    stamp = updated_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"ls-{ls_annotation_id}-{stamp}"


def annotator_name(completed_by: Any, users: Mapping[int, str]) -> str:
    """``completed_by`` is an id in webhooks/lists and an expanded dict in task detail."""
    if isinstance(completed_by, Mapping):
        email = completed_by.get("email")
        if email:
            return str(email)
        completed_by = completed_by.get("id")
    if isinstance(completed_by, int):
        return users.get(completed_by, f"user-{completed_by}")
    raise InvalidInputError(f"annotation without a valid completed_by: {completed_by!r}")
