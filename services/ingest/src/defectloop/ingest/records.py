"""What ingest remembers (SQLModel): gateway tokens, images, rejections, each camera's last
fingerprint.

SQLite by default (``<state>/ingest.db``); a PostgreSQL URL works unchanged. ``table=True`` models
never leave this module through the API: responses are built from explicit fields.

The image and rejection tables are ingest's **outbox**: every outcome is recorded with its event
before it is published, and ``published`` turns true only after Kafka acknowledged it; the
republisher (:mod:`defectloop.ingest.outbox`) publishes whatever is left. Writes that concurrent
requests race on are safe: an image insert that loses the race returns the winner's record, and
the camera fingerprint is an upsert (two first frames of one camera both succeed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Column, LargeBinary, inspect, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, func, select

from defectloop.common.db import make_engine
from defectloop.common.errors import ConfigError
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
    traceparent: str | None = Field(
        None, description="The upload request's W3C trace context: a republish continues it."
    )
    tracestate: str | None = None
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


class RejectionRecord(SQLModel, table=True):
    """A refused upload's ``image.rejected`` event, kept until Kafka acknowledged it."""

    __tablename__ = "ingest_rejection"

    seq: int | None = Field(default=None, primary_key=True, description="Publishing order.")
    event_id: str = Field(unique=True)
    site_id: str = Field(index=True)
    camera_id: str
    reason: str
    event_json: str = Field(description="The image.rejected event, published verbatim.")
    published: bool = Field(default=False, index=True)
    created_at: datetime = Field(default_factory=utc_now)
    published_at: datetime | None = None


INGEST_TABLES = (GatewayToken, ImageRecord, CameraFingerprint, RejectionRecord)


def open_database(url: str) -> Engine:
    """An engine on ``url`` with ingest's tables created (and only those)."""
    with sqlalchemy_errors(f"{_WHAT} at {url}"):
        engine = make_engine(url, create_tables=False)
        SQLModel.metadata.create_all(
            engine,
            tables=[model.__table__ for model in INGEST_TABLES],  # type: ignore[union-attr]
        )
        _add_missing_columns(engine)
    return engine


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns a database made by an older ingest lacks (``create_all`` makes
    missing tables only): e.g. ``ingest_image.traceparent``. Only nullable columns are ever added
    this way, so existing rows stay valid (NULL: no trace context recorded)."""
    inspector = inspect(engine)
    for model in INGEST_TABLES:
        table = model.__table__  # type: ignore[union-attr]
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing = [c for c in table.columns if c.name not in present]
        if not missing:
            continue
        with engine.begin() as conn:
            for column in missing:
                if not column.nullable:
                    raise ConfigError(
                        f"{table.name}.{column.name} is missing and cannot be added (not null)",
                        hint="migrate the ingest database by hand, or start from a fresh one",
                    )
                kind = column.type.compile(dialect=engine.dialect)
                conn.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))


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
        """Upsert: the first frames of one camera posted at once all succeed (last one wins),
        where a read-then-insert failed the losers with a UNIQUE violation."""
        values = {
            "site_id": site_id,
            "camera_id": camera_id,
            "fingerprint": fingerprint,
            "image_id": image_id,
            "updated_at": utc_now(),
        }
        changed = {k: values[k] for k in ("fingerprint", "image_id", "updated_at")}
        table = CameraFingerprint.__table__  # type: ignore[attr-defined]
        dialect = self.engine.dialect.name
        with self._session() as session:
            if dialect == "postgresql":
                pg = postgresql.insert(table).values(**values)
                session.execute(
                    pg.on_conflict_do_update(index_elements=["site_id", "camera_id"], set_=changed)
                )
            else:
                lite = sqlite.insert(table).values(**values)
                session.execute(
                    lite.on_conflict_do_update(
                        index_elements=["site_id", "camera_id"], set_=changed
                    )
                )
            session.commit()

    def unpublished(self, limit: int = 100) -> list[ImageRecord]:
        """Recorded images Kafka has not acknowledged yet, oldest first."""
        with self._session() as session:
            query = (
                select(ImageRecord)
                .where(ImageRecord.published == False)  # noqa: E712
                .order_by(ImageRecord.created_at)  # type: ignore[arg-type]
                .limit(limit)
            )
            return list(session.exec(query))

    def add_rejection(self, record: RejectionRecord) -> None:
        with self._session() as session:
            session.add(record)
            session.commit()

    def unpublished_rejections(self, limit: int = 100) -> list[RejectionRecord]:
        """Rejections Kafka has not acknowledged yet, in the order they were recorded."""
        with self._session() as session:
            query = (
                select(RejectionRecord)
                .where(RejectionRecord.published == False)  # noqa: E712
                .order_by(RejectionRecord.seq)  # type: ignore[arg-type]
                .limit(limit)
            )
            return list(session.exec(query))

    def mark_rejection_published(self, event_id: str) -> None:
        with self._session() as session:
            query = select(RejectionRecord).where(RejectionRecord.event_id == event_id)
            record = session.exec(query).first()
            if record is not None and not record.published:
                record.published = True
                record.published_at = utc_now()
                session.add(record)
                session.commit()

    def pending_counts(self) -> tuple[int, int]:
        """(images, rejections) recorded and not yet acknowledged by Kafka."""
        with self._session() as session:
            images = session.exec(
                select(func.count()).where(ImageRecord.published == False)  # noqa: E712
            ).one()
            rejections = session.exec(
                select(func.count()).where(RejectionRecord.published == False)  # noqa: E712
            ).one()
            return int(images), int(rejections)
