"""Events as the services publish them, for tests that need one without running the service."""

from __future__ import annotations

from datetime import UTC, datetime

from defectloop.common.events import ModelRole, PredictionMade, ScoredBox, prediction_id_for


def prediction(
    site: str,
    image_id: str,
    *,
    version: str = "v1",
    role: ModelRole = ModelRole.CHAMPION,
    sha256: str = "0" * 64,
    size: int = 64,
    boxes: tuple[ScoredBox, ...] = (),
    defective: bool = False,
    decision_score: float = 0.1,
    model_name: str = "m",
    blob_uri: str = "file:///x.png",
    captured_at: datetime | None = None,
    latency_ms: float = 1.0,
) -> PredictionMade:
    """The ``prediction.made`` of model ``version`` in ``role`` for the square image ``image_id``
    (``size`` pixels a side) of camera ``cam-1`` of ``site``, captured now unless
    ``captured_at``; threshold 0.5, not an outlier, queue and inference ``latency_ms`` each."""
    return PredictionMade(
        site_id=site,
        camera_id="cam-1",
        prediction_id=prediction_id_for(image_id, version, role.value),
        image_id=image_id,
        sha256=sha256,
        blob_uri=blob_uri,
        width=size,
        height=size,
        boxes=boxes,
        defective=defective,
        decision_score=decision_score,
        decision_threshold=0.5,
        model_name=model_name,
        model_version=version,
        role=role,
        outlier_score=0.0,
        outlier=False,
        captured_at=captured_at or datetime.now(UTC),
        queue_latency_ms=latency_ms,
        inference_latency_ms=latency_ms,
    )
