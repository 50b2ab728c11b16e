"""The fault run's independent checker: its own Kafka client, the topics as they ended up.

Judged (Jepsen-style: lost / duplicated / unexpected), for the run's site:

- **lost**: an image ingest acknowledged (202) with no champion ``prediction.made``;
- **duplicates after dedupe**: an image with more than one champion ``decision_id`` (what an MES
  that dedupes as documented would act on twice); **raw redeliveries**: champion records beyond
  one per image (at-least-once delivery: expected after a ``kill -9``, harmless after dedupe);
- **unexpected**: a champion prediction of an image ingest never acknowledged;
- **DLQ**: ``image.captured.dlq`` and ``prediction.made.dlq`` hold only the injected poison;
- **lag**: inference's consumer group committed up to the end of ``image.captured``;
- **annotation-sync** (when the run has it): every image it sampled is pushed, and is **exactly
  one** task in Label Studio (read through Label Studio's own API, keyed by
  ``data.defectloop_key``); no task of an image it did not sample; its group's lag on
  ``prediction.made`` is 0;
- **monitor** (when the run has it): once its group caught up on ``prediction.made``, its count of
  the site's champion predictions equals the unique champion ``decision_id``s on the topic
  (nothing lost or doubled across its restarts);
- **trainer** (when the run has it): no incident is in two jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from defectloop.common import topics
from defectloop.common.events import DeadLetter, ModelRole, PredictionMade
from defectloop.common.kafka_read import read_events

INFERENCE_GROUP = "inference"
ANNOTATION_GROUP = "annotation-sync"
MONITOR_GROUP = "monitor"
TRAINER_GROUP = "trainer"


@dataclass(frozen=True)
class AnnotationSide:
    """Where to look for what annotation-sync did: its SQLite database and its Label Studio."""

    database: Path
    label_studio_url: str
    token: str


class OfferLike(Protocol):
    status: int | None
    image_id: str | None
    acked_at_s: float | None


class FaultLike(Protocol):
    at_s: float
    lost: int
    duplicates: int
    ack_gap_s: float | None


async def _lag(bootstrap: str, topic: str, group: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await consumer.start()
    await admin.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        ends = await consumer.end_offsets(tps)
        done = await admin.list_consumer_group_offsets(group)
    finally:
        await consumer.stop()
        await admin.close()
    committed = {tp: meta.offset for tp, meta in done.items()}
    return sum(max(0, end - max(committed.get(tp, 0), 0)) for tp, end in ends.items())


async def _settled_lag(
    bootstrap: str, stall_s: float, topic: str = topics.IMAGE_CAPTURED, group: str = INFERENCE_GROUP
) -> int:
    """The group's lag on ``topic`` once 0, or once it made no committed progress for
    ``stall_s`` (the watchdog: a backlog still shrinking is waited for, a stuck one is not)."""
    best: int | None = None
    since = time.monotonic()
    while True:
        lag = await _lag(bootstrap, topic, group)
        if lag == 0:
            return 0
        if best is None or lag < best:
            best, since = lag, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return lag
        await asyncio.sleep(1.0)  # polling the committed offsets


def _samples(database: Path, site: str) -> dict[str, int | None]:
    """annotation-sync's samples of ``site``: ``<site>/<image_id>`` -> its task id (None while
    not pushed)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT key, task_id FROM annsync_sample WHERE site_id = ?", (site,)
        ).fetchall()
    return {str(key): task for key, task in rows}


def _monitor_champions(database: Path, site: str) -> int:
    """The monitor's stored champion predictions of ``site`` (one per decision since it dedupes
    on decision_id)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        (count,) = db.execute(
            "SELECT COUNT(*) FROM monitor_prediction WHERE site_id = ? AND role = ?",
            (site, ModelRole.CHAMPION.value),
        ).fetchone()
    return int(count)


def _trainer_jobs(database: Path, site: str) -> list[list[str]]:
    """The incident ids of each of the trainer's jobs of ``site`` (none if it never opened one)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        try:
            rows = db.execute(
                "SELECT incident_ids_json FROM trainer_job WHERE site_id = ?", (site,)
            ).fetchall()
        except sqlite3.OperationalError:  # no table: the trainer never stored a job
            return []
    return [list(json.loads(text)) for (text,) in rows]


def judge_monitor(
    stored: int, predictions: list[PredictionMade], *, lag: int
) -> tuple[dict[str, Any], list[str]]:
    """The monitor's count against the topic's unique champion decisions."""
    unique = len({p.decision_id for p in predictions if p.role == ModelRole.CHAMPION})
    summary = {"champion_predictions": stored, "unique_decisions": unique, "lag_after": lag}
    failures = []
    if stored != unique:
        failures.append(f"monitor stored {stored} champion predictions for {unique} decisions")
    if lag:
        failures.append(f"monitor lag still {lag}")
    return summary, failures


def judge_trainer(jobs: list[list[str]], *, lag: int) -> tuple[dict[str, Any], list[str]]:
    """No incident opened (or joined) two jobs."""
    per_incident = Counter(i for incidents in jobs for i in set(incidents))
    twice = sorted(i for i, n in per_incident.items() if n > 1)
    summary = {"jobs": len(jobs), "incidents": len(per_incident), "lag_after": lag}
    failures = [f"incident {i} is in {per_incident[i]} jobs" for i in twice]
    if lag:
        failures.append(f"trainer lag still {lag}")
    return summary, failures


def _label_studio_keys(side: AnnotationSide) -> Counter[str]:
    """``data.defectloop_key`` of every task of every project of the instance, counted."""
    headers = {"Authorization": f"Token {side.token}"}
    keys: Counter[str] = Counter()
    with httpx.Client(base_url=side.label_studio_url, headers=headers, timeout=60) as client:
        projects = client.get("/api/projects/", params={"page_size": 100})
        projects.raise_for_status()
        body = projects.json()
        for project in body.get("results", []) if isinstance(body, dict) else body:
            page = 1
            while True:
                resp = client.get(
                    "/api/tasks/",
                    params={"project": project["id"], "page": page, "page_size": 100},
                )
                if resp.status_code == 404:  # past the last page
                    break
                resp.raise_for_status()
                tasks = resp.json().get("tasks", [])
                for task in tasks:
                    key = (task.get("data") or {}).get("defectloop_key")
                    if key:
                        keys[str(key)] += 1
                if len(tasks) < 100:
                    break
                page += 1
    return keys


async def _settled_annotation(
    bootstrap: str, side: AnnotationSide, site: str, stall_s: float
) -> tuple[int, dict[str, int | None]]:
    """annotation-sync's lag and samples, once it caught up and pushed everything (or made no
    progress for ``stall_s``: a push still pending then is reported as unpushed)."""
    lag = await _settled_lag(bootstrap, stall_s, topics.PREDICTION_MADE, ANNOTATION_GROUP)
    best: int | None = None
    since = time.monotonic()
    while True:
        samples = _samples(side.database, site)
        unpushed = sum(1 for task in samples.values() if task is None)
        if unpushed == 0:
            return lag, samples
        if best is None or unpushed < best:
            best, since = unpushed, time.monotonic()
        elif time.monotonic() - since > stall_s:
            return lag, samples
        await asyncio.sleep(1.0)  # polling the pusher's progress


def judge_annotation(
    samples: dict[str, int | None], tasks: Counter[str], acked: set[str], *, site: str, lag: int
) -> tuple[dict[str, Any], list[str]]:
    """Every sampled image pushed exactly once; nothing pushed that was not sampled."""
    summary = {
        "samples": len(samples),
        "unpushed": sum(1 for task in samples.values() if task is None),
        "tasks": sum(tasks.values()),
        "missing": sum(1 for key in samples if tasks[key] == 0),
        "duplicated": sum(1 for key in samples if tasks[key] > 1),
        "unknown": sum(1 for key in tasks if key not in samples),
        "not_acknowledged": sum(1 for key in samples if key.split("/", 1)[1] not in acked),
        "lag_after": lag,
    }
    failures = [
        f"annotation-sync: {summary[name]} {what}"
        for name, what in (
            ("unpushed", "sampled images never pushed"),
            ("missing", "sampled images without a Label Studio task"),
            ("duplicated", "images pushed to Label Studio more than once"),
            ("unknown", "Label Studio tasks of images it did not sample"),
            ("not_acknowledged", "sampled images ingest never acknowledged"),
            ("lag_after", "records of prediction.made not committed"),
        )
        if summary[name]
    ]
    if not samples:
        failures.append(f"annotation-sync sampled nothing of site {site}")
    return summary, failures


async def _read(bootstrap: str, site: str) -> tuple[list[PredictionMade], list[DeadLetter]]:
    predictions = await read_events(
        bootstrap,
        topics.PREDICTION_MADE,
        model=PredictionMade,
        where=lambda p: p.site_id == site,
        client_id="faults-checker",
    )
    letters: list[DeadLetter] = []
    for topic in (topics.IMAGE_CAPTURED, topics.PREDICTION_MADE):
        letters += await read_events(
            bootstrap, topics.dlq_topic(topic), model=DeadLetter, client_id="faults-checker"
        )
    return predictions, letters


def _ack_gap(acked_at: list[float], start: float, end: float) -> float | None:
    """The longest time without a 202 from ``start`` to the last acknowledgement before ``end``:
    the outage as the gateways saw it (a broker restart: until the first produce succeeded)."""
    if not acked_at:
        return None
    times = [start, *sorted(acked_at)]
    return round(max(b - a for a, b in itertools.pairwise(times)), 2)


def judge(
    offers: Sequence[OfferLike],
    predictions: list[PredictionMade],
    letters: list[DeadLetter],
    *,
    poison_key: str,
    faults: Sequence[FaultLike],
    lag: int,
) -> dict[str, Any]:
    """The verdict from what the gateways were told and what the topics hold."""
    acked = {o.image_id: o for o in offers if o.status == 202 and o.image_id}
    decisions: dict[str, set[str]] = defaultdict(set)
    records: Counter[str] = Counter()
    for p in predictions:
        if p.role == ModelRole.CHAMPION:
            decisions[p.image_id].add(p.decision_id)
            records[p.image_id] += 1
    lost = sorted(set(acked) - set(decisions))
    doubled = sorted(i for i, ids in decisions.items() if len(ids) > 1)
    unexpected = sorted(set(decisions) - set(acked))
    poison = [d for d in letters if d.key == poison_key]
    other_letters = [d for d in letters if d.key != poison_key]
    windows = [f.at_s for f in faults] + [float("inf")]
    for index, fault in enumerate(faults):
        in_window = [
            i
            for i, o in acked.items()
            if o.acked_at_s is not None and windows[index] <= o.acked_at_s < windows[index + 1]
        ]
        fault.lost = sum(1 for i in in_window if i in set(lost))
        fault.duplicates = sum(1 for i in in_window if i in set(doubled))
        fault.ack_gap_s = _ack_gap(
            [acked[i].acked_at_s or 0.0 for i in in_window], windows[index], windows[index + 1]
        )
    dlq_other = dict(Counter(f"{d.source_topic}:{d.reason}" for d in other_letters))
    summary: dict[str, Any] = {
        "offered": len(offers),
        "acknowledged": len(acked),
        "rejected": sum(1 for o in offers if o.status is not None and o.status != 202),
        "unanswered": sum(1 for o in offers if o.status is None),
        "lost": len(lost),
        "duplicates_after_dedupe": len(doubled),
        "raw_redeliveries": sum(records.values()) - len(records),
        "unexpected": len(unexpected),
        "dlq": {"poison": len(poison), "other": dlq_other},
        "lag_after": lag,
    }
    failures = []
    if lost:
        failures.append(f"{len(lost)} acknowledged images without a decision (e.g. {lost[0]})")
    if doubled:
        failures.append(f"{len(doubled)} images with two champion decisions")
    if unexpected:
        failures.append(f"{len(unexpected)} decisions for images never acknowledged")
    if summary["unanswered"]:
        failures.append(f"{summary['unanswered']} images never answered by ingest")
    if not poison:
        failures.append("the injected poison is not on the DLQ")
    if other_letters:
        failures.append(f"{len(other_letters)} dead letters besides the injected poison")
    if lag:
        failures.append(f"inference lag still {lag}")
    return {"summary": summary, "failures": failures, "passed": not failures}


def check(
    bootstrap: str,
    *,
    site: str,
    offers: list[Any],
    faults: list[Any],
    poison_key: str,
    stall_s: float,
    annotation: AnnotationSide | None = None,
    monitor_db: Path | None = None,
    trainer_db: Path | None = None,
) -> dict[str, Any]:
    """Wait for inference (and annotation-sync) to catch up (the watchdog gives up after
    ``stall_s`` without progress), read the topics (and Label Studio), judge."""

    async def run() -> tuple[int, list[PredictionMade], list[DeadLetter]]:
        lag = await _settled_lag(bootstrap, stall_s)
        predictions, letters = await _read(bootstrap, site)
        return lag, predictions, letters

    started = time.monotonic()  # every offer answered: from here, the time to zero lag
    lag, predictions, letters = asyncio.run(run())
    caught_up_s = round(time.monotonic() - started, 1)
    failed = [f for f in faults if getattr(f, "error", None)]
    verdict = judge(offers, predictions, letters, poison_key=poison_key, faults=faults, lag=lag)
    verdict["summary"]["zero_lag_after_s"] = caught_up_s
    if annotation is not None:
        started = time.monotonic()
        ann_lag, samples = asyncio.run(_settled_annotation(bootstrap, annotation, site, stall_s))
        caught_up_s = round(time.monotonic() - started, 1)
        acked = {o.image_id for o in offers if o.status == 202 and o.image_id}
        summary, failures = judge_annotation(
            samples, _label_studio_keys(annotation), acked, site=site, lag=ann_lag
        )
        verdict["summary"]["annotation"] = {**summary, "all_pushed_after_s": caught_up_s}
        verdict["failures"] += failures
        verdict["passed"] = verdict["passed"] and not failures
    if monitor_db is not None:
        mon_lag = asyncio.run(
            _settled_lag(bootstrap, stall_s, topics.PREDICTION_MADE, MONITOR_GROUP)
        )
        summary, failures = judge_monitor(
            _monitor_champions(monitor_db, site), predictions, lag=mon_lag
        )
        verdict["summary"]["monitor"] = summary
        verdict["failures"] += failures
        verdict["passed"] = verdict["passed"] and not failures
    if trainer_db is not None:
        # The trainer opens jobs from metric.degraded: caught up there, its jobs are final.
        tr_lag = asyncio.run(
            _settled_lag(bootstrap, stall_s, topics.METRIC_DEGRADED, TRAINER_GROUP)
        )
        summary, failures = judge_trainer(_trainer_jobs(trainer_db, site), lag=tr_lag)
        verdict["summary"]["trainer"] = summary
        verdict["failures"] += failures
        verdict["passed"] = verdict["passed"] and not failures
    for f in failed:
        verdict["failures"].append(f"fault {f.fault} did not recover: {f.error}")
        verdict["passed"] = False
    return verdict
