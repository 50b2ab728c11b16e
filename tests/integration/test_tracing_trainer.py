"""The trainer's work on an incident is traced back to the metric.degraded that caused it: its
incident span is in that event's trace, and each step of the job it opened links to it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from defectloop.common import tracing
from defectloop.common.events import DegradationKind, MetricDegraded
from defectloop.common.kafka import build_broker, publish_event
from defectloop.common.tracing import build_tracer_provider
from defectloop.testing.net import free_port, wait_until

pytestmark = pytest.mark.integration


def _spans(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_a_retraining_job_links_to_the_metric_degraded_that_opened_it(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from defectloop.trainer.main import build_app
    from defectloop.trainer.settings import TrainerSettings

    site = "tr" + uuid.uuid4().hex[:10]
    traces = tmp_path / "trainer-spans.jsonl"
    settings = TrainerSettings(
        kafka_bootstrap=kafka_bootstrap,
        port=free_port(),
        database_url=f"sqlite:///{tmp_path / 'trainer.db'}",
        blob_url=(tmp_path / "blobs").as_uri(),
        work_dir=tmp_path / "work",
        trace_file=str(traces),
        # The label wait gives up at once: the job takes a step (waiting -> timed_out) without
        # training anything, which is all this test needs.
        retrain_policy={"label_wait_timeout_s": 0.001},
        only_sites=[site],
        job_tick_s=0.5,
    )
    app = build_app(settings, group_id=f"trainer-{site}")
    now = datetime.now(UTC)
    incident = MetricDegraded(
        site_id=site,
        incident_id="perf-1",
        kind=DegradationKind.PERFORMANCE,
        metric="recall",
        value=0.4,
        baseline=0.92,
        threshold=0.87,
        window_start=now - timedelta(minutes=5),
        window_end=now,
        sample_size=80,
        change_point_at=now - timedelta(minutes=5),
    )
    # The monitor's side: its publish span starts the event's trace.
    monitor_spans = tmp_path / "monitor-spans.jsonl"
    monitor = build_tracer_provider("monitor", trace_file=str(monitor_spans))
    producer = build_broker(kafka_bootstrap, client_id="monitor-test", tracer_provider=monitor)
    async with app.router.lifespan_context(app):
        await producer.start()
        try:
            await publish_event(producer, incident)
        finally:
            await producer.stop()
        monitor.force_flush()

        async def step_exported() -> list[dict[str, Any]] | None:
            spans = _spans(traces)
            return spans if any(s["name"].startswith("trainer.job.") for s in spans) else None

        spans = await wait_until(step_exported, timeout_s=60, what="the job's step span")

    [published] = [s for s in _spans(monitor_spans) if s["name"] == "metric.degraded publish"]
    [handled] = [s for s in spans if s["name"] == "trainer.incident"]
    [step] = [s for s in spans if s["name"] == "trainer.job.waiting_for_labels"]
    assert handled["trace_id"] == published["trace_id"], "the incident span is in the event's trace"
    assert handled["attributes"][tracing.ATTR_OUTCOME] == "open"
    job_id = handled["attributes"][tracing.ATTR_JOB_ID]
    assert step["attributes"][tracing.ATTR_JOB_ID] == job_id
    assert step["attributes"][tracing.ATTR_OUTCOME] == "timed_out"
    assert {"trace_id": handled["trace_id"], "span_id": handled["span_id"]} in step["links"]
