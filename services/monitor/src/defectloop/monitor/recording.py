"""How consumed events become rows: idempotent and order-independent.

A redelivered event (same id) adds nothing. An annotation that ``supersedes`` another hides it,
whichever of the two arrives (or is batched) first. A champion prediction whose ``decision_id`` is
already stored adds nothing either: after an inference crash and a model switch the redelivered
image is predicted again by the new champion (new ``prediction_id``, same decision), and the MES
acts on the first one only (docs/inference.md, MES contract), so the monitor scores that one only.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select as sa_select
from sqlalchemy import update
from sqlmodel import Session, SQLModel, col

from defectloop.common.events import (
    AnnotationCompleted,
    Event,
    ModelRole,
    PredictionMade,
    decision_id_for,
)
from defectloop.monitor.records import _annotation_row, _row
from defectloop.monitor.tables import AnnotationRow, PredictionRow


def _add_new(s: Session, row: SQLModel) -> bool:
    """Add ``row`` to the session unless a row with its primary key exists (or is pending)."""
    pk = row.__table__.primary_key.columns  # type: ignore[attr-defined]
    ident = tuple(getattr(row, c.name) for c in pk)
    if s.get(type(row), ident if len(ident) > 1 else ident[0]) is not None:
        return False
    s.add(row)
    s.flush()  # later events of the same batch must see it (dedupe, supersedes)
    return True


def _add_all(s: Session, events: Sequence[Event]) -> None:
    """Add the events' rows that are not stored yet: one existence query per table."""
    by_table: dict[type[SQLModel], dict[str, SQLModel]] = {}
    events = _first_champion_decisions(s, events)
    for event in events:
        if isinstance(event, AnnotationCompleted):
            continue
        row = _row(event)
        (pk,) = row.__table__.primary_key.columns  # type: ignore[attr-defined]
        by_table.setdefault(type(row), {}).setdefault(getattr(row, pk.name), row)
    for table, rows in by_table.items():
        (pk,) = table.__table__.primary_key.columns  # type: ignore[attr-defined]
        stored = set(s.execute(sa_select(pk).where(pk.in_(list(rows)))).scalars())
        s.add_all(row for key, row in rows.items() if key not in stored)
    s.flush()
    _add_annotations(s, [e for e in events if isinstance(e, AnnotationCompleted)])


def _first_champion_decisions(s: Session, events: Sequence[Event]) -> list[Event]:
    """``events`` less the champion predictions whose decision is already known (stored, or earlier
    in this batch). Stored rows have no decision_id column: theirs is ``decision_id_for(image_id,
    role)``, the rule the event model applies (v1 events included), so it is derived, not stored."""
    champion = ModelRole.CHAMPION
    p = PredictionRow
    new = [e for e in events if isinstance(e, PredictionMade) and e.role == champion]
    if not new:
        return list(events)
    stored = s.execute(
        sa_select(col(p.image_id), col(p.prediction_id)).where(
            col(p.site_id).in_({e.site_id for e in new}),
            col(p.image_id).in_({e.image_id for e in new}),
            col(p.role) == champion.value,
        )
    ).all()
    # A redelivery of the stored prediction itself (same prediction_id) stays a primary-key no-op.
    seen = {decision_id_for(image_id, champion.value): pid for image_id, pid in stored}
    kept: list[Event] = []
    for e in events:
        if isinstance(e, PredictionMade) and e.role == champion:
            first = seen.setdefault(e.decision_id, e.prediction_id)
            if first != e.prediction_id:
                continue
        kept.append(e)
    return kept


def _add_annotations(s: Session, events: Sequence[AnnotationCompleted]) -> None:
    """Add new annotations; an annotation is superseded once its successor is known, whichever
    of the two arrived (or was batched) first."""
    if not events:
        return
    a = AnnotationRow
    fresh = {e.annotation_id: e for e in events}
    stored = set(
        s.execute(sa_select(col(a.annotation_id)).where(col(a.annotation_id).in_(list(fresh))))
        .scalars()
        .all()
    )
    fresh = {k: e for k, e in fresh.items() if k not in stored}
    successors = {e.supersedes for e in fresh.values() if e.supersedes}
    successors |= set(
        s.execute(sa_select(col(a.supersedes)).where(col(a.supersedes).in_(list(fresh))))
        .scalars()
        .all()
    )
    s.add_all(_annotation_row(e, superseded=k in successors) for k, e in fresh.items())
    replaced = [e.supersedes for e in fresh.values() if e.supersedes]
    if replaced:
        s.execute(update(a).where(col(a.annotation_id).in_(replaced)).values(superseded=True))
    s.flush()
