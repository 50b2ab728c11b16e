"""Prometheus metrics of every service, served on ``GET /metrics`` by the common service shell.

The metrics are defined once here, in one registry (:data:`REGISTRY`): names, help texts and
label sets are part of the ops contract (Grafana's dashboard in ``deploy/`` and the docs read
them). A service process serves the registry of its process; in production that is one service,
so each ``/metrics`` shows its own figures. Label values are bounded sets (sites, reasons, model
versions, topics), never ids.

Consumer lag is read from the service's own Kafka consumers when ``/metrics`` is scraped
(:func:`refresh_consumer_lag`), so it is always the value now, never a stale sample.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from faststream.kafka import KafkaBroker
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

# --- label names (also used by the dashboards) -------------------------------------------------
SITE = "site_id"
REASON = "reason"
MODEL_VERSION = "model_version"
ROLE = "role"
SERVICE = "service"
TOPIC = "topic"
PARTITION = "partition"
GROUP = "group"
STATUS = "status"
OUTCOME = "outcome"
GATE = "gate"
KIND = "kind"

# --- ingest -------------------------------------------------------------------------------------
IMAGES_ACCEPTED = Counter(
    "defectloop_images_accepted",
    "Images accepted by ingest (image.captured acknowledged by Kafka).",
    [SITE],
    registry=REGISTRY,
)
IMAGES_REJECTED = Counter(
    "defectloop_images_rejected",
    "Uploads refused by ingest, by machine-readable reason (image.rejected).",
    [SITE, REASON],
    registry=REGISTRY,
)

# --- inference ----------------------------------------------------------------------------------
PREDICTIONS = Counter(
    "defectloop_predictions",
    "prediction.made events published, per site, model version and role.",
    [SITE, MODEL_VERSION, ROLE],
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "defectloop_inference_batch_size",
    "Images per inference batch.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
    registry=REGISTRY,
)
END_TO_END_LATENCY = Histogram(
    "defectloop_end_to_end_latency_seconds",
    "From ingest's acceptance (image.captured occurred_at) to the champion's prediction.made "
    "acknowledged by Kafka.",
    [SITE],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
    registry=REGISTRY,
)

# --- every consumer -----------------------------------------------------------------------------
CONSUMER_LAG = Gauge(
    "defectloop_consumer_lag",
    "Records behind the end of the partition (high watermark - position), per consumer group.",
    [SERVICE, GROUP, TOPIC, PARTITION],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "defectloop_dead_letters",
    "Records sent to <topic>.dlq, by the topic they came from and the one reason.",
    [SERVICE, TOPIC, REASON],
    registry=REGISTRY,
)

# --- annotation-sync ----------------------------------------------------------------------------
ANNOTATION_TASKS = Counter(
    "defectloop_annotation_tasks",
    "Predictions sampled for annotation (each becomes a Label Studio task), by sampling reason.",
    [SITE, REASON],
    registry=REGISTRY,
)
ANNOTATION_UNPUSHED = Gauge(
    "defectloop_annotation_sync_unpushed",
    "Sampled images waiting for their Label Studio task (the pusher's backlog), per site.",
    [SITE],
    registry=REGISTRY,
)
ANNOTATIONS = Counter(
    "defectloop_annotations",
    "annotation.completed events published, by status (completed / skipped).",
    [SITE, STATUS],
    registry=REGISTRY,
)

# --- monitor ------------------------------------------------------------------------------------
INCIDENTS_OPEN = Gauge(
    "defectloop_incidents_open",
    "Open incidents (metric.degraded not yet recovered), by kind.",
    [SITE, KIND],
    registry=REGISTRY,
)

# --- trainer ------------------------------------------------------------------------------------
TRAINING_JOBS = Counter(
    "defectloop_training_jobs",
    "Retraining jobs that reached an end state, by outcome.",
    [SITE, OUTCOME],
    registry=REGISTRY,
)
GATE_OUTCOMES = Counter(
    "defectloop_gate_outcomes",
    "Gate decisions on retrained candidates (passed true/false).",
    [SITE, GATE, "passed"],
    registry=REGISTRY,
)

# --- HTTP (the service shell) -------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "defectloop_http_requests",
    "HTTP requests answered, by route template and status code.",
    [SERVICE, "method", "route", STATUS],
    registry=REGISTRY,
)

_lag_labels: dict[str, set[tuple[str, str, str, str]]] = {}
_incident_labels: set[tuple[str, str]] = set()


def set_incidents_open(open_now: Iterable[tuple[str, str]]) -> None:
    """Set :data:`INCIDENTS_OPEN` from the open incidents' (site, kind) pairs; a pair seen before
    and closed now reads 0 (not absent: "no incident" is a value an alert compares against)."""
    counts: dict[tuple[str, str], int] = {}
    for key in open_now:
        counts[key] = counts.get(key, 0) + 1
    _incident_labels.update(counts)
    for key in _incident_labels:
        INCIDENTS_OPEN.labels(*key).set(counts.get(key, 0))


def _consumers(broker: KafkaBroker) -> list[Any]:
    found: list[Any] = []
    for subscriber in broker.subscribers:
        consumers = getattr(subscriber, "consumer_subgroup", None) or [
            getattr(subscriber, "consumer", None)
        ]
        found.extend(c for c in consumers if c is not None)
    return found


async def refresh_consumer_lag(broker: KafkaBroker, service: str, timeout_s: float = 1.0) -> None:
    """Set :data:`CONSUMER_LAG` for every partition ``service``'s consumers own now.

    Partitions a consumer no longer owns (a rebalance moved them) are removed, not left at their
    last value. A partition whose position is not known yet (no fetch yet) is skipped.
    """
    seen: set[tuple[str, str, str, str]] = set()
    for consumer in _consumers(broker):
        group = str(getattr(consumer, "_group_id", "") or "")
        try:
            assignment = consumer.assignment()
        except Exception:  # a consumer stopping while scraped: nothing to report for it
            continue
        for tp in assignment:
            highwater = consumer.highwater(tp)
            if highwater is None:
                continue
            try:
                position = await asyncio.wait_for(consumer.position(tp), timeout=timeout_s)
            except Exception:  # no committed position yet, or a rebalance in progress
                continue
            labels = (service, group, tp.topic, str(tp.partition))
            CONSUMER_LAG.labels(*labels).set(max(0, highwater - position))
            seen.add(labels)
    for stale in _lag_labels.get(service, set()) - seen:
        CONSUMER_LAG.remove(*stale)
    _lag_labels[service] = seen
