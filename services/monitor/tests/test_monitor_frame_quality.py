"""A labelled frame is judged on its own camera's quality before performance counts it.

The race CI hit: labels of a blurred camera's frames reached the performance detector before the
camera-level quality detector had seen enough blurred frames to breach, so the model's diverted
good parts opened a ``performance`` incident beside (or before) the camera's ``data_quality`` one.
These tests replay the same fault under several arrival orders and batchings, in-process and
deterministic: labels before their frames, everything in one batch, many small batches, frames
lagging far behind their labels. The blur is mild (sharpness 340 ± 40 against 400 ± 40): no
single frame is out of its camera's range, only a window of them is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from defectloop.common.events import (
    DegradationKind,
    Event,
    ImageCaptured,
    MetricDegraded,
)
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.store import MonitorStore

from .conftest import EventFactory, SimulatedCamera, simulate

pytestmark = [pytest.mark.unit, pytest.mark.slow]  # in-process, but 15-60 s each

Groups = Sequence[Sequence[object]]
Schedule = Callable[[Groups], list[list[Event]]]

GOOD = [SimulatedCamera("cam-1"), SimulatedCamera("cam-2"), SimulatedCamera("cam-3")]
MILD_BLUR = SimulatedCamera("cam-3", blurred=True, blur_sharpness=340.0, blur_sd=40.0)
DARKER = 100.0  # every camera's brightness after a site-wide lighting change (120 before)


def _events(groups: Groups) -> list[Event]:
    return [e for g in groups for e in g if isinstance(e, Event)]


def labels_before_frames(groups: Groups) -> list[list[Event]]:
    """Every prediction and label of the period first, then the frames ten at a time."""
    labels = [e for e in _events(groups) if not isinstance(e, ImageCaptured)]
    frames: list[Event] = [e for e in _events(groups) if isinstance(e, ImageCaptured)]
    return [labels, *(frames[i : i + 10] for i in range(0, len(frames), 10))]


def one_batch(groups: Groups) -> list[list[Event]]:
    return [_events(groups)]


def small_batches(groups: Groups) -> list[list[Event]]:
    """Nine events at a time: frame, prediction and label of one frame of each camera."""
    return [_events(groups[i : i + 3]) for i in range(0, len(groups), 3)]


def frames_lagging(groups: Groups) -> list[list[Event]]:
    """Batches of 12 groups whose frames come 60 groups (20 per camera) after their labels."""
    lag, size = 60, 12
    labels = [[e for e in g if not isinstance(e, ImageCaptured)] for g in groups]
    frames = [[e for e in g if isinstance(e, ImageCaptured)] for g in groups]
    batches = []
    for start in range(0, len(groups) + lag, size):
        batch = [e for g in labels[start : start + size] for e in g if isinstance(e, Event)]
        late = frames[max(0, start - lag) : max(0, start + size - lag)]
        batch += [e for g in late for e in g if isinstance(e, Event)]
        if batch:
            batches.append(batch)
    return batches


SCHEDULES: dict[str, Schedule] = {
    "labels_before_frames": labels_before_frames,
    "one_batch": one_batch,
    "small_batches": small_batches,
    "frames_lagging": frames_lagging,
}


def run(store: MonitorStore, evaluator: Evaluator, batches: list[list[Event]]) -> list[Event]:
    """Record each batch (one consumed Kafka batch) and evaluate after it, at its newest time."""
    out: list[Event] = []
    newest = None
    for batch in batches:
        store.record_many(batch)
        times = [getattr(e, "captured_at", None) for e in batch]
        newest = max([t for t in times if t is not None] + ([newest] if newest else []))
        out.extend(evaluator.run_once(newest))
    return out


def opened(events: Sequence[Event], kind: DegradationKind) -> list[MetricDegraded]:
    return [e for e in events if isinstance(e, MetricDegraded) and e.kind == kind]


def calm_site(store: MonitorStore, evaluator: Evaluator, site: EventFactory) -> list[Event]:
    store.record(site.deployed("v1", baseline={"recall": 0.92, "precision": 0.95}))
    groups = simulate(site, np.random.default_rng(1), 0, 200, cameras=GOOD)
    return run(store, evaluator, [_events(groups[i : i + 60]) for i in range(0, len(groups), 60)])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_mildly_blurred_camera_never_opens_a_performance_incident(
    store: MonitorStore, quality_evaluator: Evaluator, site: EventFactory, schedule: str
) -> None:
    calm = calm_site(store, quality_evaluator, site)
    fault = simulate(
        site, np.random.default_rng(6), 200, 120, cameras=[GOOD[0], GOOD[1], MILD_BLUR]
    )
    events = run(store, quality_evaluator, SCHEDULES[schedule](fault))

    assert calm == []
    quality = opened(events, DegradationKind.DATA_QUALITY)
    assert [(e.camera_id, e.model_version) for e in quality] == [("cam-3", None)]
    assert opened(events, DegradationKind.PERFORMANCE) == []


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_site_wide_lighting_change_still_opens_a_performance_incident(
    store: MonitorStore, quality_evaluator: Evaluator, site: EventFactory, schedule: str
) -> None:
    calm = calm_site(store, quality_evaluator, site)
    darker = [SimulatedCamera(c.camera_id, brightness=DARKER, miss_rate=0.5) for c in GOOD]
    fault = simulate(site, np.random.default_rng(6), 200, 120, cameras=darker)
    events = run(store, quality_evaluator, SCHEDULES[schedule](fault))

    assert calm == []
    assert "recall" in [e.metric for e in opened(events, DegradationKind.PERFORMANCE)]
    assert opened(events, DegradationKind.DATA_QUALITY) == []
