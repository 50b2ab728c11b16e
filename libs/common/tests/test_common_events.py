from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from defectloop.common import events, topics

pytestmark = pytest.mark.unit

SHA = "a" * 64


def _captured(**overrides: object) -> events.ImageCaptured:
    fields: dict[str, object] = dict(
        site_id="A",
        camera_id="cam-1",
        image_id=events.image_id_for("A", "cam-1", SHA),
        sha256=SHA,
        blob_uri="file:///tmp/x.png",
        captured_at=datetime(2026, 1, 1, tzinfo=UTC),
        width=512,
        height=512,
        quality=events.QualityMetrics(sharpness=10, brightness=100, contrast=20, uniform=False),
    )
    fields.update(overrides)
    return events.ImageCaptured(**fields)  # type: ignore[arg-type]


def test_image_id_is_deterministic_per_camera_and_bytes() -> None:
    assert events.image_id_for("A", "cam-1", SHA) == events.image_id_for("A", "cam-1", SHA)
    assert events.image_id_for("A", "cam-1", SHA) != events.image_id_for("A", "cam-2", SHA)


def test_prediction_id_differs_per_model_version_and_role() -> None:
    ids = {
        events.prediction_id_for("img", v, r) for v in ("1", "2") for r in ("champion", "shadow")
    }
    assert len(ids) == 4


def test_camera_events_are_keyed_by_site_and_camera() -> None:
    assert _captured().key() == b"A/cam-1"


def test_model_deployed_is_keyed_by_site_and_role_for_compaction() -> None:
    event = events.ModelDeployed(
        site_id="A",
        role=events.ModelRole.SHADOW,
        model_name="m",
        model_version="v1",
        artifact_uri="file:///b",
        sha256=SHA,
    )
    assert event.key() == b"A/shadow"


def test_events_are_frozen() -> None:
    with pytest.raises(ValidationError):
        _captured().width = 3  # type: ignore[misc]


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        _captured(colour="red")


def test_occurred_at_is_normalised_to_utc() -> None:
    paris = timezone(timedelta(hours=1))
    event = _captured(occurred_at=datetime(2026, 1, 1, 12, tzinfo=paris))
    assert event.occurred_at.utcoffset() == timedelta(0)
    assert event.occurred_at.hour == 11


def test_naive_timestamps_are_refused() -> None:
    with pytest.raises(ValidationError):
        _captured(captured_at=datetime(2026, 1, 1))


def test_site_ids_cannot_smuggle_key_separators() -> None:
    with pytest.raises(ValidationError):
        _captured(site_id="A/B")


def test_json_round_trip_keeps_the_event() -> None:
    event = _captured()
    assert events.ImageCaptured.model_validate_json(event.model_dump_json()) == event


def test_every_event_topic_has_one_model() -> None:
    assert {events.model_for_topic(t).topic for t in topics.EVENT_TOPICS} == set(
        topics.EVENT_TOPICS
    )


def test_topic_specs_compact_only_model_deployed_and_include_dlqs() -> None:
    specs = {s.name: s for s in topics.topic_specs(partitions=4)}
    assert specs[topics.MODEL_DEPLOYED].configs()["cleanup.policy"] == "compact"
    assert all(not s.compacted for n, s in specs.items() if n != topics.MODEL_DEPLOYED)
    assert {topics.dlq_topic(t) for t in topics.EVENT_TOPICS} <= specs.keys()
    assert specs[topics.IMAGE_CAPTURED].partitions == 4
