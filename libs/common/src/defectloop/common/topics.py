"""Kafka topic names and per-topic settings: the only place a topic name is spelled out.

Topic name = event type (brief §3). Dead-letter topics are ``<topic>.dlq``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

IMAGE_CAPTURED: Final = "image.captured"
IMAGE_REJECTED: Final = "image.rejected"
PREDICTION_MADE: Final = "prediction.made"
ANNOTATION_COMPLETED: Final = "annotation.completed"
METRIC_DEGRADED: Final = "metric.degraded"
METRIC_RECOVERED: Final = "metric.recovered"
LABELS_REQUESTED: Final = "labels.requested"
MODEL_DEPLOYED: Final = "model.deployed"
MODEL_REFUSED: Final = "model.refused"

EVENT_TOPICS: Final = (
    IMAGE_CAPTURED,
    IMAGE_REJECTED,
    PREDICTION_MADE,
    ANNOTATION_COMPLETED,
    METRIC_DEGRADED,
    METRIC_RECOVERED,
    LABELS_REQUESTED,
    MODEL_DEPLOYED,
    MODEL_REFUSED,
)

DLQ_SUFFIX: Final = ".dlq"

DECISIONS_PREFIX: Final = "decisions."
"""Per-site decision topics ``decisions.<site_id>``: each site's champion decisions, copied from
``prediction.made`` so that a site's MES can be allowed to read its own site only (Kafka ACLs are
per topic; see docs/security.md for the MES contract)."""


def decisions_topic(site_id: str) -> str:
    """The decision topic of ``site_id`` (site ids are topic-safe: ``[A-Za-z0-9_-]``)."""
    return f"{DECISIONS_PREFIX}{site_id}"


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return f"{topic}{DLQ_SUFFIX}"


@dataclass(frozen=True)
class TopicSpec:
    """How a topic is created: partitions, and whether it is log-compacted (latest value per key)."""

    name: str
    partitions: int
    compacted: bool = False

    def configs(self) -> dict[str, str]:
        if self.compacted:
            # model.deployed is a table keyed by site/role: keep the latest value per key forever.
            return {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"}
        return {}


def topic_specs(partitions: int = 6) -> list[TopicSpec]:
    """Every topic the stack needs, DLQs included."""
    specs = [TopicSpec(t, partitions, compacted=(t == MODEL_DEPLOYED)) for t in EVENT_TOPICS]
    # DLQs carry little traffic; one partition keeps them in arrival order for ops.
    specs += [TopicSpec(dlq_topic(t), 1) for t in EVENT_TOPICS]
    return specs
