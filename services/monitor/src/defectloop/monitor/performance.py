"""Image- and box-level performance of a site's model from human labels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from defectloop.common.events import Box, ModelRole, ScoredBox


@dataclass(frozen=True)
class LabelledPrediction:
    """One model's prediction on one image joined with the image's current human annotation."""

    site_id: str
    camera_id: str
    model_version: str
    role: ModelRole
    image_id: str
    truth_defective: bool
    predicted_defective: bool
    decision_score: float
    truth_boxes: tuple[Box, ...]
    predicted_boxes: tuple[ScoredBox, ...]
    sampling_reason: str | None
    captured_at: datetime
    labelled_at: datetime
    annotator: str
