"""The outbox's republisher publishes an image in its upload request's trace (the CI flake of
test_tracing_zipkin: the republisher's round published a just-recorded image before the request
did, and the image.captured record went out in a trace of its own).

Deterministic: the row is recorded with a request's trace context, ONE republisher round runs (no
HTTP request publishes anything), and the record is read back from the real broker.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from anyio import to_thread
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import Engine, inspect, text

from defectloop.common import topics, tracing
from defectloop.common.events import ImageCaptured, QualityMetrics, image_id_for, sha256_hex
from defectloop.common.kafka import build_broker
from defectloop.common.kafka_connection import BackgroundConnection
from defectloop.common.kafka_read import Record, read_topic
from defectloop.ingest.outbox import ImageLocks, Republisher
from defectloop.ingest.publisher import EventPublisher
from defectloop.ingest.records import ImageRecord, ImageStore, open_database


def _record(site: str, traceparent: str | None, tracestate: str | None = None) -> ImageRecord:
    digest = sha256_hex(uuid.uuid4().bytes)
    event = ImageCaptured(
        site_id=site,
        camera_id="cam-1",
        image_id=image_id_for(site, "cam-1", digest),
        sha256=digest,
        blob_uri=f"file:///nowhere/{digest}.png",
        captured_at=datetime.now(UTC),
        width=64,
        height=64,
        quality=QualityMetrics(sharpness=10.0, brightness=100.0, contrast=20.0, uniform=False),
    )
    return ImageRecord(
        image_id=event.image_id,
        site_id=site,
        camera_id="cam-1",
        sha256=digest,
        blob_uri=event.blob_uri,
        width=64,
        height=64,
        event_json=event.model_dump_json(),
        traceparent=traceparent,
        tracestate=tracestate,
    )


@asynccontextmanager
async def republisher(
    bootstrap: str, store: ImageStore, provider: TracerProvider
) -> AsyncIterator[Republisher]:
    """A republisher on a connected broker, never started: the test runs its rounds itself."""
    broker = build_broker(bootstrap, client_id="test-outbox-trace", tracer_provider=provider)
    connection = BackgroundConnection(broker, bootstrap=bootstrap)
    connection.start()
    try:
        await connection.wait_connected(60)
        yield Republisher(
            store,
            EventPublisher(connection, publish_timeout_s=30),
            ImageLocks(),
            interval_s=3600,
            tracer=provider.get_tracer("test"),
        )
    finally:
        await connection.stop()
        await broker.stop()


async def _record_of(bootstrap: str, image_id: str) -> Record:
    records = await read_topic(bootstrap, topics.IMAGE_CAPTURED, client_id="test-outbox-trace")
    mine = [r for r in records if image_id.encode() in (r.value or b"")]
    assert len(mine) == 1, f"{len(mine)} image.captured records of {image_id}"
    return mine[0]


def _headers(record: Record) -> dict[str, str]:
    return {k: v.decode() for k, v in record.headers or () if v is not None}


@pytest.mark.integration
async def test_a_republished_image_carries_its_request_trace(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    spans = InMemorySpanExporter()
    provider = tracing.build_tracer_provider("ingest", exporter=spans)
    store = ImageStore(open_database(f"sqlite:///{tmp_path / 'ingest.db'}"))
    site = "otr" + uuid.uuid4().hex[:8]

    # The upload request recorded the image inside its span, then lost the race (or got a 503).
    request = provider.get_tracer("test").start_span("post /v1/sites/{site}/cameras/{camera}")
    request_ctx = request.get_span_context()
    record = _record(site, tracing.traceparent(request), tracestate="vendor=kept")
    request.end()
    await to_thread.run_sync(store.insert, record)

    async with republisher(kafka_bootstrap, store, provider) as outbox:
        await outbox.publish_pending()  # one round, nothing else publishes

    stored = await to_thread.run_sync(store.get, record.image_id)
    assert stored is not None
    assert stored.published
    headers = _headers(await _record_of(kafka_bootstrap, record.image_id))
    assert headers["traceparent"].split("-")[1] == format(request_ctx.trace_id, "032x")
    assert headers.get("tracestate") == "vendor=kept"

    # The republish is a span of its own, child of the request's, marked as a republish; the
    # publish spans (whose id the header carries) sit under it.
    finished = {s.name: s for s in spans.get_finished_spans()}
    republish = finished["ingest.republish"]
    assert republish.parent is not None
    assert republish.parent.span_id == request_ctx.span_id
    assert republish.context.trace_id == request_ctx.trace_id
    assert (republish.attributes or {})[tracing.ATTR_REPUBLISH] is True
    assert (republish.attributes or {})[tracing.ATTR_IMAGE] == record.image_id
    publish = finished["image.captured publish"]
    assert headers["traceparent"].split("-")[2] in {
        format(publish.context.span_id, "016x"),
        format(publish.parent.span_id, "016x") if publish.parent else "",
    }


@pytest.mark.integration
async def test_an_image_recorded_without_trace_context_is_republished_in_a_trace_of_its_own(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    spans = InMemorySpanExporter()
    provider = tracing.build_tracer_provider("ingest", exporter=spans)
    store = ImageStore(open_database(f"sqlite:///{tmp_path / 'ingest.db'}"))
    record = _record("otr" + uuid.uuid4().hex[:8], traceparent=None)
    await to_thread.run_sync(store.insert, record)

    async with republisher(kafka_bootstrap, store, provider) as outbox:
        await outbox.publish_pending()

    republish = next(s for s in spans.get_finished_spans() if s.name == "ingest.republish")
    assert republish.parent is None, "no recorded context: the republish starts the trace"
    assert (republish.attributes or {})[tracing.ATTR_IMAGE] == record.image_id
    headers = _headers(await _record_of(kafka_bootstrap, record.image_id))
    assert headers["traceparent"].split("-")[1] == format(republish.context.trace_id, "032x")


@pytest.mark.unit
def test_a_database_from_before_the_trace_columns_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "ingest.db"
    open_database(f"sqlite:///{path}").dispose()
    # What an older ingest made: the image table without the trace context columns, one row.
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE ingest_image DROP COLUMN traceparent")
        db.execute("ALTER TABLE ingest_image DROP COLUMN tracestate")
        columns = {row[1] for row in db.execute("PRAGMA table_info(ingest_image)")}
        assert "traceparent" not in columns
    old = _record("old", traceparent=None)
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO ingest_image (image_id, site_id, camera_id, sha256, blob_uri, width,"
            " height, quality, status, event_json, published, created_at)"
            " VALUES (?, 'old', 'cam-1', ?, ?, 64, 64, '{}', 'accepted', ?, 0, ?)",
            (old.image_id, old.sha256, old.blob_uri, old.event_json, "2026-01-01 00:00:00"),
        )

    store = ImageStore(open_database(f"sqlite:///{path}"))
    kept = store.get(old.image_id)
    assert kept is not None
    assert kept.traceparent is None
    assert not kept.published
    new = _record("old", traceparent="00-" + "1" * 32 + "-" + "2" * 16 + "-01")
    store.insert(new)
    assert [r.image_id for r in store.unpublished()] == [old.image_id, new.image_id]
    assert store.get(new.image_id).traceparent == new.traceparent  # type: ignore[union-attr]


@pytest.mark.integration
def test_a_postgresql_database_from_before_the_trace_columns_gets_them(
    postgres_schema_engine: Engine,
) -> None:
    url = postgres_schema_engine.url.render_as_string(hide_password=False)
    open_database(url).dispose()
    with postgres_schema_engine.begin() as conn:
        conn.execute(text("ALTER TABLE ingest_image DROP COLUMN traceparent"))
        conn.execute(text("ALTER TABLE ingest_image DROP COLUMN tracestate"))

    engine = open_database(url)
    try:
        columns = {c["name"] for c in inspect(engine).get_columns("ingest_image")}
        assert {"traceparent", "tracestate"} <= columns
        record = _record("pg", traceparent="00-" + "3" * 32 + "-" + "4" * 16 + "-01")
        ImageStore(engine).insert(record)
        stored = ImageStore(engine).get(record.image_id)
        assert stored is not None
        assert stored.traceparent == record.traceparent
    finally:
        engine.dispose()
