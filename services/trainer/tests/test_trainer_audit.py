"""The hash-chained audit log: it verifies, and any edit, removal or fork of a record is caught."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, ProgrammingError

from defectloop.trainer.audit import (
    GENESIS_HASH,
    AuditAction,
    AuditRecord,
    append_record,
    chain_records,
    record_hash,
    verify_chain,
)
from defectloop.trainer.registry import Registry

pytestmark = pytest.mark.unit


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    reg = Registry(f"sqlite:///{tmp_path / 'trainer.db'}")
    with reg.session() as s:
        for i, action in enumerate(
            (AuditAction.GATE_PASSED, AuditAction.APPROVED, AuditAction.PROMOTED)
        ):
            append_record(
                s,
                action=action,
                actor=f"user{i}",
                model_version="v2",
                site="B",
                reason=f"step {i}",
                evidence={"p_value": 0.01 * (i + 1), "counts": [i, i + 1]},
            )
        s.commit()
    return reg


def _records(reg: Registry) -> list[AuditRecord]:
    with reg.session() as s:
        return list(chain_records(s))


def _tamper(reg: Registry, sql: str) -> None:
    """What someone with write access to the database file could do (the guards dropped first)."""
    with reg.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_records_no_update")
        conn.exec_driver_sql("DROP TRIGGER audit_records_no_delete")
        conn.exec_driver_sql(sql)


def test_an_untouched_chain_verifies(registry: Registry) -> None:
    records = _records(registry)
    verdict = verify_chain(records)
    assert (verdict.count, verdict.intact) == (3, True)
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.prev_hash for r in records[1:]] == [r.hash for r in records[:-1]]
    assert records[2].evidence == {"p_value": 0.03, "counts": [2, 3]}


def test_the_hash_covers_the_content_and_the_link(registry: Registry) -> None:
    record = _records(registry)[1]
    assert record_hash(record) == record.hash
    assert record_hash(record.model_copy(update={"reason": "step 9"})) != record.hash
    assert record_hash(record.model_copy(update={"prev_hash": GENESIS_HASH})) != record.hash


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("actor", "'mallory'"),
        ("evidence_json", """'{"p_value":0.5,"counts":[1,2]}'"""),
        ("at", "'2020-01-01 00:00:00.000000'"),
    ],
)
def test_changing_one_field_of_one_record_is_detected_at_that_record(
    registry: Registry, column: str, value: str
) -> None:
    second = _records(registry)[1].seq
    _tamper(registry, f"UPDATE audit_records SET {column} = {value} WHERE seq = {second}")
    verdict = verify_chain(_records(registry))
    assert verdict.broken_seq == second
    assert verdict.problem is not None
    assert "does not match its hash" in verdict.problem


def test_removing_a_record_is_detected_at_the_next_one(registry: Registry) -> None:
    _, second, third = (r.seq for r in _records(registry))
    _tamper(registry, f"DELETE FROM audit_records WHERE seq = {second}")
    verdict = verify_chain(_records(registry))
    assert verdict.broken_seq == third
    assert "does not follow" in str(verdict.problem)


def test_the_database_refuses_updates_and_deletes(registry: Registry) -> None:
    with pytest.raises(IntegrityError, match="append-only"), registry.engine.begin() as conn:
        conn.execute(text("UPDATE audit_records SET actor = 'x'"))
    with pytest.raises(IntegrityError, match="append-only"), registry.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_records"))
    assert verify_chain(_records(registry)).count == 3


def test_two_records_cannot_follow_the_same_one(registry: Registry) -> None:
    last = _records(registry)[-1]
    fork = AuditRecord(
        at=last.at, actor="x", action="promoted", prev_hash=last.prev_hash, hash="f" * 64
    )
    with registry.session() as s:
        s.add(fork)
        with pytest.raises(IntegrityError, match="prev_hash"):
            s.commit()


@pytest.mark.integration
def test_the_chain_and_its_guard_on_postgres(postgres_url: str) -> None:
    from defectloop.trainer.audit import install_guards

    reg = Registry(postgres_url)
    Registry(postgres_url).dispose()  # a second start finds the guard in place
    with reg.session() as s:
        before = len(chain_records(s))
        for i in range(3):
            append_record(s, action=AuditAction.APPROVED, actor=f"pg{i}", evidence={"i": i})
        s.commit()
    with reg.session() as s:
        records = list(chain_records(s))
    assert verify_chain(records).count == before + 3
    assert verify_chain(records).intact
    with pytest.raises(ProgrammingError, match="append-only"), reg.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_records")

    target = records[-2]
    with reg.engine.begin() as conn:  # tamper, as the database owner could
        conn.exec_driver_sql("DROP TRIGGER audit_records_no_change ON audit_records")
        conn.exec_driver_sql(f"UPDATE audit_records SET actor = 'x' WHERE seq = {target.seq}")
    try:
        with reg.session() as s:
            assert verify_chain(chain_records(s)).broken_seq == target.seq
    finally:  # leave the shared database as it was
        with reg.engine.begin() as conn:
            conn.exec_driver_sql(
                f"UPDATE audit_records SET actor = '{target.actor}' WHERE seq = {target.seq}"
            )
        install_guards(reg.engine)
        reg.dispose()
