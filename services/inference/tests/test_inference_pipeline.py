"""Decode + inference + event assembly without Kafka (what the benchmark times)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from defectloop.common.blobstore import LocalBlobStore
from defectloop.common.events import ModelRole, prediction_id_for
from defectloop.inference.pipeline import Executors, ServedModel, predict_events, single_model
from defectloop.vision.runtime import Detector

pytestmark = pytest.mark.unit


@pytest.fixture
def executors() -> Iterator[Executors]:
    pools = Executors(decode_workers=2, inference_workers=1)
    yield pools
    pools.shutdown()


def _detector(bundle) -> Detector:
    return Detector.from_bundle(bundle.path, providers="cpu", intra_op_threads=1)


def _served(bundle, site: str, role: ModelRole = ModelRole.CHAMPION) -> ServedModel:
    return ServedModel(
        site_id=site,
        role=role,
        name="tiny",
        version=bundle.version,
        sha256=bundle.sha256,
        artifact_uri=bundle.path.as_uri(),
        detector=_detector(bundle),
    )


async def test_inference_predicts_every_image_with_boxes_in_original_pixels(
    make_bundle, make_image, store: LocalBlobStore, executors: Executors
) -> None:
    # the tiny model's box is (cx 10, cy 14, w 8, h 4) in 32x32 input: x2 and x1.5 for 64x48
    events = [make_image("s", width=64, height=48) for _ in range(3)]
    result = await predict_events(
        events, store, single_model(_detector(make_bundle("v1"))), executors
    )
    assert [p.image_id for p in result.predictions] == [e.image_id for e in events]
    box = result.predictions[0].boxes[0]
    assert (box.label, box.x, box.y, box.w, box.h) == pytest.approx(
        ("scratch", 12.0, 18.0, 16.0, 6.0)
    )


async def test_inference_prediction_carries_deterministic_id_and_event_fields(
    make_bundle, make_image, store: LocalBlobStore, executors: Executors
) -> None:
    event = make_image("s", camera="cam-7")
    result = await predict_events(
        [event], store, single_model(_detector(make_bundle("v9"))), executors
    )
    p = result.predictions[0]
    assert p.prediction_id == prediction_id_for(event.image_id, "v9", "champion")
    assert (p.site_id, p.camera_id, p.key()) == ("s", "cam-7", b"s/cam-7")
    assert (p.sha256, p.blob_uri, p.captured_at) == (
        event.sha256,
        event.blob_uri,
        event.captured_at,
    )
    assert (p.width, p.height, p.model_version) == (64, 48, "v9")
    assert p.defective is True
    assert p.decision_score == pytest.approx(0.9, abs=1e-4)


async def test_inference_a_bad_item_fails_alone(
    make_bundle, make_image, store: LocalBlobStore, executors: Executors
) -> None:
    good1, bad, good2 = make_image("s"), make_image("s", store_blob=False), make_image("s")
    result = await predict_events(
        [good1, bad, good2], store, single_model(_detector(make_bundle())), executors
    )
    assert [p.image_id for p in result.predictions] == [good1.image_id, good2.image_id]
    assert [(f.index, f.error.reason) for f in result.failures] == [(1, "missing_blob")]


async def test_inference_site_without_champion_fails_with_no_model(
    make_image, store: LocalBlobStore, executors: Executors
) -> None:
    result = await predict_events([make_image("s")], store, lambda site: (), executors)
    assert result.predictions == []
    assert [f.error.reason for f in result.failures] == ["no_model"]


async def test_inference_shadow_model_adds_a_second_prediction_marked_shadow(
    make_bundle, make_image, store: LocalBlobStore, executors: Executors
) -> None:
    models = (_served(make_bundle("v1"), "s"), _served(make_bundle("v2"), "s", ModelRole.SHADOW))
    event = make_image("s")
    result = await predict_events([event], store, lambda site: models, executors)
    assert [(p.role, p.model_version) for p in result.predictions] == [
        (ModelRole.CHAMPION, "v1"),
        (ModelRole.SHADOW, "v2"),
    ]
    assert len({p.prediction_id for p in result.predictions}) == 2


async def test_inference_routes_each_site_to_its_own_model(
    make_bundle, make_image, store: LocalBlobStore, executors: Executors
) -> None:
    table = {"a": (_served(make_bundle("va"), "a"),), "b": (_served(make_bundle("vb"), "b"),)}
    events = [make_image("a"), make_image("b"), make_image("a")]
    result = await predict_events(events, store, lambda site: table.get(site, ()), executors)
    assert [(p.site_id, p.model_version) for p in result.predictions] == [
        ("a", "va"),
        ("b", "vb"),
        ("a", "va"),
    ]
