"""What ingest remembers (SQLModel): gateway tokens, images, each camera's last fingerprint.

SQLite by default (``<state>/ingest.db``); a PostgreSQL URL works unchanged. ``table=True`` models
never leave this module through the API: responses are built from explicit fields.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, select

from defectloop.common.db import make_engine
from defectloop.common.events import utc_now
from defectloop.common.translate import sqlalchemy_errors

_WHAT = "ingest database"


class GatewayToken(SQLModel, table=True):
    """A camera gateway's credential: only the SHA-256 of the token is stored."""

    __tablename__ = "ingest_gateway_token"

    token_id: str = Field(primary_key=True, description="Public id, part of the token.")
    site_id: str = Field(index=True)
    camera_id: str | None = Field(None, description="Restrict to one camera; None = any.")
    token_sha256: str
    created_at: datetime = Field(default_factory=utc_now)
    revoked_at: datetime | None = None


class ImageRecord(SQLModel, table=True):
    """An accepted image; ``published`` turns true only after Kafka acknowledged its event."""

    __tablename__ = "ingest_image"

    image_id: str = Field(primary_key=True)
    site_id: str = Field(index=True)
    camera_id: str
    sha256: str = Field(index=True)
    blob_uri: str
    width: int
    height: int
    quality: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = "accepted"
    event_json: str = Field(description="The image.captured event, replayed verbatim on retry.")
    published: bool = False
    created_at: datetime = Field(default_factory=utc_now)
    published_at: datetime | None = None


class CameraFingerprint(SQLModel, table=True):
    """The 32x32 thumbnail of each camera's last accepted frame (near-duplicate detection)."""

    __tablename__ = "ingest_camera_fingerprint"

    site_id: str = Field(primary_key=True)
    camera_id: str = Field(primary_key=True)
    fingerprint: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    image_id: str
    updated_at: datetime = Field(default_factory=utc_now)


INGEST_TABLES = (GatewayToken, ImageRecord, CameraFingerprint)


def open_database(url: str) -> Engine:
    """An engine on ``url`` with ingest's tables created (and only those)."""
    with sqlalchemy_errors(f"{_WHAT} at {url}"):
        engine = make_engine(url, create_tables=False)
        SQLModel.metadata.create_all(
            engine,
            tables=[model.__table__ for model in INGEST_TABLES],  # type: ignore[union-attr]
        )
    return engine


class ImageStore:
    """Synchronous access to image records; call it from a worker thread."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with sqlalchemy_errors(_WHAT), Session(self.engine, expire_on_commit=False) as session:
            yield session

    def get(self, image_id: str) -> ImageRecord | None:
        with self._session() as session:
            return session.get(ImageRecord, image_id)

    def insert(self, record: ImageRecord) -> ImageRecord:
        """Insert ``record``; if a concurrent request inserted the same image, return that one."""
        with self._session() as session:
            session.add(record)
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
                existing = session.get(ImageRecord, record.image_id)
                if existing is None:
                    raise
                return existing
            return record

    def mark_published(self, image_id: str) -> None:
        with self._session() as session:
            record = session.get(ImageRecord, image_id)
            if record is not None and not record.published:
                record.published = True
                record.published_at = utc_now()
                session.add(record)
                session.commit()

    def previous_fingerprint(self, site_id: str, camera_id: str) -> bytes | None:
        with self._session() as session:
            row = session.get(CameraFingerprint, (site_id, camera_id))
            return row.fingerprint if row is not None else None

    def set_fingerprint(
        self, site_id: str, camera_id: str, fingerprint: bytes, image_id: str
    ) -> None:
        with self._session() as session:
            row = session.get(CameraFingerprint, (site_id, camera_id))
            if row is None:
                row = CameraFingerprint(
                    site_id=site_id, camera_id=camera_id, fingerprint=fingerprint, image_id=image_id
                )
            else:
                row.fingerprint = fingerprint
                row.image_id = image_id
                row.updated_at = utc_now()
            session.add(row)
            session.commit()

    def unpublished(self, limit: int = 100) -> list[ImageRecord]:
        with self._session() as session:
            query = select(ImageRecord).where(ImageRecord.published == False).limit(limit)  # noqa: E712
            return list(session.exec(query))
