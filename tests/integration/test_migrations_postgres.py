"""Each service's Alembic history builds its tables on an empty PostgreSQL schema exactly as its
SQLModel models declare them (Alembic's own comparison finds no difference)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, make_url, text

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "migrations"))
from service_tables import SERVICE_MODULES, service_metadata, upgrade  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture
def empty_schema_url(postgres_url: str) -> Iterator[str]:
    """The URL of a new, empty schema (dropped after)."""
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(postgres_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.mark.parametrize("service", sorted(SERVICE_MODULES))
def test_upgrade_to_head_builds_the_models_tables(service: str, empty_schema_url: str) -> None:
    upgrade(service, empty_schema_url)
    metadata = service_metadata(service)
    engine = create_engine(empty_schema_url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()
    assert tables == set(metadata.tables) | {"alembic_version"}
    assert diffs == []
