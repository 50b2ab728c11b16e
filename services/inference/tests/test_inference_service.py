"""The inference service on the real broker: predictions, DLQ reasons, model routing, switches."""

from __future__ import annotations

from collections import Counter

import httpx
import pytest
from faststream.kafka import KafkaBroker

from defectloop.common import topics
from defectloop.common.events import Event, ModelRole
from defectloop.common.kafka import publish_event
from defectloop.testing.kafka import collect

pytestmark = pytest.mark.integration

CHAMPION = ModelRole.CHAMPION


async def _publish(broker: KafkaBroker, *events: Event) -> None:
    for event in events:
        await publish_event(broker, event)


async def test_inference_predicts_every_image_once_with_the_sites_model(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    await _publish(producer, make_bundle("v1").deployed(site))
    async with run_service(settings_for()):
        images = [make_image(site, f"cam-{i % 3}") for i in range(12)]
        await _publish(producer, *images)
        await outputs.wait(lambda o: len(o.predictions) >= 12)
    assert sorted(p.image_id for p in outputs.predictions) == sorted(e.image_id for e in images)
    assert {(p.site_id, p.model_version, p.role) for p in outputs.predictions} == {
        (site, "v1", CHAMPION)
    }


async def test_inference_dead_letters_an_image_of_a_site_without_a_model(
    producer, outputs, site, make_image, settings_for, run_service
) -> None:
    async with run_service(settings_for()):
        await _publish(producer, make_image(site))
        await outputs.wait(lambda o: len(o.dead_letters) >= 1)
    assert [d.reason for d in outputs.dead_letters] == ["no_model"]
    assert outputs.predictions == []


async def test_inference_poison_events_go_to_the_dlq_and_the_next_image_is_predicted(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    await _publish(producer, make_bundle("v1").deployed(site))
    async with run_service(settings_for()):
        await producer.publish(
            b"{not json", topic=topics.IMAGE_CAPTURED, key=f"{site}/cam-1".encode()
        )
        missing = make_image(site, store_blob=False)
        garbage = make_image(site, data=b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
        good = make_image(site)
        await _publish(producer, missing, garbage, good)
        await outputs.wait(lambda o: len(o.dead_letters) >= 3 and len(o.predictions) >= 1)
    assert sorted(d.reason for d in outputs.dead_letters) == [
        "missing_blob",
        "schema_violation",
        "undecodable",
    ]
    assert [p.image_id for p in outputs.predictions] == [good.image_id]


async def test_inference_refuses_a_tampered_bundle_and_keeps_serving_the_previous_model(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    await _publish(producer, make_bundle("v1").deployed(site))
    async with run_service(settings_for()) as app:
        router = app.state.router
        tampered = make_bundle("v2")
        (tampered.path / "model.onnx").write_bytes(b"not the registered model")
        await _publish(producer, tampered.deployed(site))
        await router.wait_for(lambda r: r.rejected_version(site, CHAMPION) == "v2")
        image = make_image(site)
        await _publish(producer, image)
        await outputs.wait(lambda o: len(o.predictions) >= 1)
    assert [(p.image_id, p.model_version) for p in outputs.predictions] == [(image.image_id, "v1")]


async def test_inference_model_switch_mid_stream_loses_and_duplicates_nothing(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    await _publish(producer, make_bundle("v1").deployed(site))
    async with run_service(settings_for(max_batch=4)) as app:
        before = [make_image(site, f"cam-{i % 4}") for i in range(40)]
        await _publish(producer, *before[:20], make_bundle("v2").deployed(site), *before[20:])
        await app.state.router.wait_for(lambda r: r.serving_version(site, CHAMPION) == "v2")
        after = [make_image(site, f"cam-{i % 4}") for i in range(8)]
        await _publish(producer, *after)
        await outputs.wait(lambda o: len(o.champion()) >= 48)
    per_image = Counter(p.image_id for p in outputs.champion())
    assert set(per_image) == {e.image_id for e in before + after}
    assert set(per_image.values()) == {1}
    assert {p.model_version for p in outputs.champion()} <= {"v1", "v2"}
    after_ids = {e.image_id for e in after}
    assert {p.model_version for p in outputs.champion() if p.image_id in after_ids} == {"v2"}


async def test_inference_shadow_model_publishes_a_second_prediction_marked_shadow(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    await _publish(
        producer,
        make_bundle("v1").deployed(site),
        make_bundle("v2").deployed(site, role=ModelRole.SHADOW),
    )
    async with run_service(settings_for()):
        image = make_image(site)
        await _publish(producer, image)
        await outputs.wait(lambda o: len(o.predictions) >= 2)
    assert sorted((p.role.value, p.model_version) for p in outputs.predictions) == [
        ("champion", "v1"),
        ("shadow", "v2"),
    ]


async def test_inference_models_endpoint_shows_which_version_serves_which_site(
    producer, site, make_bundle, settings_for, run_service
) -> None:
    await _publish(producer, make_bundle("v1").deployed(site))
    async with run_service(settings_for()) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://inference") as client:
            body = (await client.get("/v1/models")).json()
    rows = [r for r in body["models"] if r["site_id"] == site]
    assert [(r["role"], r["serving"]["model_version"]) for r in rows] == [("champion", "v1")]


async def test_inference_images_waiting_at_boot_are_predicted_not_dead_lettered_as_no_model(
    producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    images = [make_image(site) for _ in range(5)]
    await _publish(producer, make_bundle("v1").deployed(site), *images)
    async with run_service(settings_for()):
        await outputs.wait(lambda o: len(o.predictions) >= 5)
    assert sorted(p.image_id for p in outputs.predictions) == sorted(e.image_id for e in images)
    assert outputs.dead_letters == []


async def test_inference_dead_letters_an_invalid_model_deployed_and_keeps_serving(
    kafka_bootstrap, producer, outputs, site, make_bundle, make_image, settings_for, run_service
) -> None:
    key = f"{site}/champion".encode()
    await _publish(producer, make_bundle("v1").deployed(site))
    await producer.publish(b'{"site_id": "in the backlog"}', topic=topics.MODEL_DEPLOYED, key=key)
    async with (
        collect(
            kafka_bootstrap,
            topics.dlq_topic(topics.MODEL_DEPLOYED),
            where=lambda letter: letter.site_id == site,
        ) as letters,
        run_service(settings_for()) as app,
    ):
        await letters.wait_for(lambda found: len(found) >= 1)
        await producer.publish(b"{not json", topic=topics.MODEL_DEPLOYED, key=key)
        await letters.wait_for(lambda found: len(found) >= 2)
        image = make_image(site)
        await _publish(producer, image)
        await outputs.wait(lambda o: len(o.predictions) >= 1)
        serving = app.state.router.serving_version(site, CHAMPION)
    assert [(d.reason, d.source_topic, d.key) for d in letters.items] == [
        ("schema_violation", topics.MODEL_DEPLOYED, key.decode())
    ] * 2
    assert [(p.image_id, p.model_version) for p in outputs.predictions] == [(image.image_id, "v1")]
    assert serving == "v1"
