"""`defectloop trace`'s reading of spans: the tree and the story told from their outcomes."""

from __future__ import annotations

import pytest

from defectloop.cli.trace_cmd import Span, build_forest, summarize
from defectloop.common import tracing

pytestmark = pytest.mark.unit


def span(name: str, sid: str, parent: str | None, start: int, service: str, **tags: str) -> Span:
    return Span("t1", sid, parent, name, service, start, 10, dict(tags))


def test_the_forest_nests_children_in_start_order_and_keeps_orphans_as_roots() -> None:
    spans = [
        span("inference.image", "b", "a", 20, "inference"),
        span("request", "a", None, 0, "ingest"),
        span("ingest.validate", "c", "a", 5, "ingest"),
        span("late", "d", "missing", 1, "monitor"),
    ]
    roots = build_forest(spans)
    assert [r.name for r in roots] == ["request", "late"]
    assert [c.name for c in roots[0].children] == ["ingest.validate", "inference.image"]


def test_the_story_names_each_outcome_once() -> None:
    spans = [
        span(
            "post /v1/sites/{site}/cameras/{camera}/images",
            "a",
            None,
            0,
            "ingest",
            **{tracing.ATTR_OUTCOME: "accepted", tracing.ATTR_SITE: "A", tracing.ATTR_CAMERA: "c1"},
        ),
        span(
            "inference.image",
            "b",
            "a",
            5,
            "inference",
            **{
                tracing.ATTR_OUTCOME: "predicted",
                tracing.ATTR_MODEL_VERSION: "v3",
                tracing.ATTR_DEFECTIVE: "false",
                tracing.ATTR_BATCH_SIZE: "8",
            },
        ),
        span(
            "annotation.sample",
            "c",
            "b",
            9,
            "annotation-sync",
            **{tracing.ATTR_OUTCOME: "sampled", tracing.ATTR_REASON: "uncertain"},
        ),
        span("annotation.push", "d", None, 50, "annotation-sync"),
        span(
            "annotation.arrival",
            "e",
            None,
            90,
            "annotation-sync",
            **{tracing.ATTR_OUTCOME: "annotation_completed", tracing.ATTR_ANNOTATOR: "ana"},
        ),
    ]
    assert summarize(spans) == [
        "ingest: accepted at site A, camera c1",
        "inference: ok, by model v3 (batch of 8)",
        "annotation: sampled (uncertain), task pushed to Label Studio",
        "annotation: completed by ana",
    ]


def test_an_image_not_predicted_says_why() -> None:
    spans = [
        span(
            "inference.image",
            "b",
            None,
            5,
            "inference",
            **{tracing.ATTR_REASON: "no_model"},
        ),
        span("annotation.sample", "c", "b", 9, "annotation-sync"),
    ]
    assert summarize(spans) == ["inference: not predicted (no_model)", "annotation: not sampled"]
