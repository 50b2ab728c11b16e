"""The DB helper and the services' tables work on a real PostgreSQL, with the URL form of compose.yaml."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, select

from defectloop.common.db import make_engine

pytestmark = pytest.mark.integration


class _PgRow(SQLModel, table=True):
    __tablename__ = "test_pg_row"
    id: int | None = Field(default=None, primary_key=True)
    name: str


def test_engine_round_trips_rows_in_the_service_schema(postgres_url: str) -> None:
    engine = make_engine(postgres_url)
    with Session(engine) as session:
        session.add(_PgRow(name="hello"))
        session.commit()
        assert "hello" in session.exec(select(_PgRow.name)).all()
        schema = session.exec(text("SELECT current_schema()")).one()[0]  # type: ignore[call-overload]
    assert schema == "svc"
    engine.dispose()


def test_ingest_image_records_work_on_postgres(postgres_url: str) -> None:
    from defectloop.common.events import image_id_for
    from defectloop.ingest.records import ImageRecord, ImageStore, open_database

    engine = open_database(postgres_url)
    store = ImageStore(engine)
    image_id = image_id_for("pg", "cam-1", "b" * 64)
    store.insert(
        ImageRecord(
            image_id=image_id,
            site_id="pg",
            camera_id="cam-1",
            sha256="b" * 64,
            blob_uri="file:///x.png",
            width=4,
            height=4,
            quality={"sharpness": 1.0},
            event_json="{}",
        )
    )
    store.mark_published(image_id)
    record = store.get(image_id)
    assert record is not None
    assert record.published
    assert record.quality == {"sharpness": 1.0}
    engine.dispose()


def test_trainer_registry_works_on_postgres(postgres_url: str) -> None:
    from defectloop.trainer.registry import DatasetVersion, ModelVersion, Registry

    registry = Registry(postgres_url)
    registry.upsert_dataset(
        DatasetVersion(
            version="d" * 64, site="pg", num_images=2, num_train=1, num_val=1, manifest_json="{}"
        )
    )
    registry.add_model(
        ModelVersion(
            version="pg-model-1",
            name="detector",
            dataset_version="d" * 64,
            git_commit="abc",
            lockfile_sha256="e" * 64,
            config_sha256="f" * 64,
            seed=1,
            sha256="a" * 64,
            bundle_path="/tmp/b",
            metrics_json='{"map50": 0.9}',
            author="tester",
        )
    )
    assert registry.get_model("pg-model-1").metrics == {"map50": 0.9}
    registry.dispose()
