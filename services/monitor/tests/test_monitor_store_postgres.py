"""The monitor's store gives on a real PostgreSQL exactly what it gives on SQLite.

The same events (a redelivery, a superseding annotation, a few hundred simulated frames fed to
the evaluator) go into a SQLite file and into a fresh PostgreSQL schema; every query, the frozen
baselines, the saved incidents and the outbox must come back equal. The PostgreSQL session runs
in a non-UTC time zone: a timestamp that drifted by the server's offset would show here.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine

from defectloop.common.db import make_engine
from defectloop.common.events import DegradationKind, Event, ImageCaptured, ModelRole
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.settings import MonitorSettings
from defectloop.monitor.store import MonitorStore

from .conftest import EventFactory, SimulatedCamera, simulate

pytestmark = pytest.mark.integration

SITE = "pg-site"


def _scenario(store: MonitorStore) -> dict[str, Any]:
    """Record events (redelivered, corrected), evaluate a recall drop; everything observable."""
    site = EventFactory(SITE)
    store.record(site.deployed("v1"))
    handmade = [
        site.captured(1),
        site.prediction(1, defective=True),
        site.prediction(1, defective=False, version="v2", role=ModelRole.SHADOW),
        site.annotation(1, defective=True, annotation_id="a1"),
        site.annotation(1, defective=False, annotation_id="a1c", supersedes="a1"),
        site.prediction(2, defective=True),
        site.prediction(2, defective=True, version="v2", role=ModelRole.SHADOW),
        site.annotation(2, defective=True, annotation_id="a2"),
    ]
    store.record_many(handmade)
    for event in handmade:  # every one redelivered
        store.record(event)
    labelled = [asdict(r) for r in store.labelled(SITE, role=None, sampling_reason=None)]
    paired = [(asdict(a), asdict(b)) for a, b in store.paired(SITE, "v1", "v2")]
    annotations = [asdict(a) for a in store.annotations(SITE, include_superseded=True)]

    rng = np.random.default_rng(3)
    evaluator = Evaluator(store, MonitorSettings(database_url="sqlite://"))
    published: list[Event] = []
    for cameras, start in (([SimulatedCamera()], 100), ([SimulatedCamera(miss_rate=0.5)], 250)):
        groups = simulate(site, rng, start, 150, cameras=cameras)
        for i in range(0, len(groups), 25):
            batch = [e for g in groups[i : i + 25] for e in g if isinstance(e, Event)]
            store.record_many(batch)
            now = max(e.captured_at for e in batch if isinstance(e, ImageCaptured))
            published.extend(evaluator.run_once(now))
    pending = store.pending_events()
    store.mark_published(pending[0].event_id)
    return {
        "labelled": labelled,
        "paired": paired,
        "annotations": annotations,
        "counts": store.annotation_counts(SITE),
        "all_labelled": [asdict(r) for r in store.labelled(SITE)],
        "last_5": [asdict(r) for r in store.labelled(SITE, last=5)],
        "window": [
            r.image_id
            for r in store.labelled(SITE, since=site.at(100 * 16), until=site.at(120 * 16))
        ],
        "baselines": store.baselines(SITE, "v1"),
        "deployments": store.deployments(SITE),
        "champion_since": store.champion_since(SITE, "v1"),
        "captured_last": store.captured(SITE, last=3),
        "published": [e.model_dump() for e in published],
        "pending": [e.model_dump() for e in pending],
        "pending_after": [e.event_id for e in store.pending_events()],
        "incidents": store.incidents(SITE),
        "latest_signals": [s.signal for s in store.latest_signals(SITE)],
        "tracks": store.tracks(SITE),
        "cursors": store.cursors(SITE),
    }


def test_the_store_answers_the_same_on_postgres_as_on_sqlite(
    postgres_schema_engine: Engine, tmp_path: Path
) -> None:
    sqlite = _scenario(MonitorStore(make_engine(f"sqlite:///{tmp_path / 'monitor.db'}")))
    postgres = _scenario(MonitorStore(postgres_schema_engine))

    # The scenario exercised what it claims to (so equality below is not of empty results).
    site = EventFactory(SITE)
    assert sorted(
        (r["image_id"], r["model_version"], r["truth_defective"]) for r in sqlite["labelled"][:4]
    ) == sorted(
        [
            (site.image_id(1), "v1", False),  # the correction, not the superseded label
            (site.image_id(1), "v2", False),
            (site.image_id(2), "v1", True),
            (site.image_id(2), "v2", True),
        ]
    )
    assert [(a["image_id"], b["model_version"]) for a, b in sqlite["paired"]] == [
        (site.image_id(1), "v2"),
        (site.image_id(2), "v2"),
    ]
    assert sqlite["last_5"][-1]["captured_at"] == site.at(399 * 16)
    assert sqlite["last_5"][-1]["captured_at"].utcoffset() == timedelta(0)
    assert {m: b.source for m, b in sqlite["baselines"].items()} == {
        "recall": "first_window",
        "precision": "first_window",
    }
    degraded = [i for i in sqlite["incidents"] if i.kind == DegradationKind.PERFORMANCE]
    assert [i.metric for i in degraded] == ["recall"]
    assert len(sqlite["pending"]) >= 2
    assert len(sqlite["pending_after"]) == len(sqlite["pending"]) - 1

    for name in sqlite:
        assert postgres[name] == sqlite[name], name
