"""The append-only, hash-chained audit log of every model transition (closed-loop R12).

Each record says who did what to which model version at which site, when, why, with its evidence
(JSON), and links to the record before it: ``hash = sha256(canonical JSON of the record's fields,
prev_hash included)``. Changing, inserting or deleting any record but the newest breaks the chain
at that record, which :func:`verify_chain` reports (removing the newest records is not visible
from the chain alone). A unique ``prev_hash`` makes a fork (two writers appending after the same
record) fail in the database instead of silently branching; a trigger also refuses UPDATE and
DELETE (SQLite, PostgreSQL), so tampering needs deliberate access to the database.

Records are written in the caller's session, inside the same transaction as the registry change
they describe. This module does not import the registry (the registry imports it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, Text
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

GENESIS_HASH = "0" * 64


class AuditAction(StrEnum):
    REGISTERED = "registered"
    GATE_FAILED = "gate_failed"
    GATE_PASSED = "gate_passed"
    SHADOW = "shadow"
    PROMOTED = "promoted"
    RETIRED = "retired"
    ROLLED_BACK = "rolled_back"
    APPROVAL_REFUSED = "approval_refused"
    APPROVED = "approved"
    BUNDLE_REFUSED = "bundle_refused"  # an inference instance refused a deployed bundle


class AuditRecord(SQLModel, table=True):
    __tablename__ = "audit_records"

    seq: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(index=True)
    actor: str
    action: str = Field(index=True)
    model_version: str | None = Field(default=None, index=True)
    site: str | None = Field(default=None, index=True)
    reason: str = ""
    evidence_json: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    prev_hash: str = Field(max_length=64, unique=True)
    hash: str = Field(max_length=64, unique=True)

    @property
    def evidence(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.evidence_json)
        return data


def _canonical_time(at: datetime) -> str:
    # Databases hand timestamps back naive (UTC by construction here): hash the naive UTC form.
    if at.tzinfo is not None:
        at = at.astimezone(UTC).replace(tzinfo=None)
    return at.isoformat(timespec="microseconds")


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(record: AuditRecord) -> str:
    """sha256 of the canonical JSON of every field but ``seq`` and ``hash`` (prev_hash included)."""
    body = {
        "at": _canonical_time(record.at),
        "actor": record.actor,
        "action": record.action,
        "model_version": record.model_version,
        "site": record.site,
        "reason": record.reason,
        "evidence": json.loads(record.evidence_json),
        "prev_hash": record.prev_hash,
    }
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def last_hash(session: Session) -> str:
    newest = session.exec(
        select(AuditRecord).order_by(col(AuditRecord.seq).desc()).limit(1)
    ).first()
    return newest.hash if newest is not None else GENESIS_HASH


def append_record(
    session: Session,
    *,
    action: AuditAction,
    actor: str,
    model_version: str | None = None,
    site: str | None = None,
    reason: str = "",
    evidence: dict[str, Any] | None = None,
    at: datetime | None = None,
) -> AuditRecord:
    """Add the next record of the chain to ``session`` (the caller commits, with its own change)."""
    session.flush()  # records added earlier in this session are part of the chain already
    record = AuditRecord(
        at=at or datetime.now(UTC),
        actor=actor,
        action=action.value,
        model_version=model_version,
        site=site,
        reason=reason,
        evidence_json=canonical_json(evidence or {}),
        prev_hash=last_hash(session),
        hash="",
    )
    record.hash = record_hash(record)
    session.add(record)
    session.flush()
    return record


@dataclass(frozen=True)
class ChainVerdict:
    """What :func:`verify_chain` found: the count, and the first broken record if any."""

    count: int
    broken_seq: int | None = None
    problem: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_seq is None


def verify_chain(records: Iterable[AuditRecord]) -> ChainVerdict:
    """Recompute every hash and link, oldest first; stop at the first broken one."""
    prev = GENESIS_HASH
    count = 0
    for record in records:
        count += 1
        seq = record.seq if record.seq is not None else -1
        if record.prev_hash != prev:
            return ChainVerdict(
                count,
                seq,
                f"record {seq} ({record.action}) does not follow the record before it "
                "(a record was removed, inserted or reordered)",
            )
        try:
            expected = record_hash(record)
        except ValueError:  # evidence that is no longer JSON
            expected = ""
        if record.hash != expected:
            return ChainVerdict(
                count,
                seq,
                f"record {seq} ({record.action}) does not match its hash (its content was changed)",
            )
        prev = record.hash
    return ChainVerdict(count)


def chain_records(session: Session) -> Sequence[AuditRecord]:
    return session.exec(select(AuditRecord).order_by(col(AuditRecord.seq))).all()


def select_records(
    session: Session, *, site: str | None = None, model_version: str | None = None
) -> Sequence[AuditRecord]:
    query = select(AuditRecord)
    if site is not None:
        query = query.where(AuditRecord.site == site)
    if model_version is not None:
        query = query.where(AuditRecord.model_version == model_version)
    return session.exec(query.order_by(col(AuditRecord.seq))).all()


_SQLITE_GUARDS = (
    "CREATE TRIGGER IF NOT EXISTS audit_records_no_update BEFORE UPDATE ON audit_records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_records_no_delete BEFORE DELETE ON audit_records "
    "BEGIN SELECT RAISE(ABORT, 'audit records are append-only'); END",
)


_POSTGRES_GUARD_FUNCTION = (
    "CREATE OR REPLACE FUNCTION audit_records_append_only() RETURNS trigger "
    "LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit records are append-only'; END $$"
)
_POSTGRES_GUARD = (
    "CREATE TRIGGER audit_records_no_change BEFORE UPDATE OR DELETE ON audit_records "
    "FOR EACH ROW EXECUTE FUNCTION audit_records_append_only()"
)


def install_guards(engine: Engine) -> None:
    """Refuse UPDATE/DELETE of audit records in the database itself (SQLite, PostgreSQL)."""
    if engine.dialect.name == "sqlite":
        with engine.begin() as conn:
            for ddl in _SQLITE_GUARDS:
                conn.exec_driver_sql(ddl)
    elif engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            present = conn.exec_driver_sql(
                "SELECT 1 FROM pg_trigger WHERE tgname = 'audit_records_no_change' "
                "AND tgrelid = 'audit_records'::regclass"
            ).first()
            if present is None:
                conn.exec_driver_sql(_POSTGRES_GUARD_FUNCTION)
                conn.exec_driver_sql(_POSTGRES_GUARD)
