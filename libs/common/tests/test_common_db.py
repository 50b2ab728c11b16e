from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, select

from defectloop.common.db import make_engine

pytestmark = pytest.mark.unit


class _Row(SQLModel, table=True):
    __tablename__ = "test_common_db_row"
    id: int | None = Field(default=None, primary_key=True)
    name: str


def test_sqlite_engine_uses_wal_and_creates_tables(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/nested/dir/x.db")
    with Session(engine) as session:
        session.add(_Row(name="a"))
        session.commit()
        assert session.exec(select(_Row.name)).all() == ["a"]
        assert session.exec(text("PRAGMA journal_mode")).one()[0] == "wal"  # type: ignore[call-overload]


def test_second_connection_sees_committed_rows(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    with Session(make_engine(url)) as writer:
        writer.add(_Row(name="b"))
        writer.commit()
    with Session(make_engine(url, create_tables=False)) as reader:
        assert reader.exec(select(_Row.name)).all() == ["b"]
