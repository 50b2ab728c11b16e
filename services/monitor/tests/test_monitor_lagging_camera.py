"""A camera whose frames lag behind its peers' is not a camera that went quiet.

The monitor's consumer reads each partition at its own pace, and a site's cameras spread over
partitions: one camera's frames can arrive a hundred frames after its peers' (the service test
that publishes the cameras one after the other hit it). A labelled frame whose camera has not yet
sent enough frames after it, while every peer sent a whole window more, is left out as "its
camera went quiet" (never counted unjudged); it must be judged again once its camera's frames do
arrive, not left out for good. In-process and deterministic: the schedule is the lag itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from defectloop.common.events import Event, ImageCaptured
from defectloop.monitor.evaluate import Evaluator
from defectloop.monitor.store import MonitorStore

from .conftest import EventFactory, SimulatedCamera, simulate

pytestmark = [pytest.mark.unit, pytest.mark.slow]  # in-process, ~40-90 s on a loaded machine

CAMERAS = [SimulatedCamera("cam-1"), SimulatedCamera("cam-2"), SimulatedCamera("cam-3")]
CALM, LAGGING = 200, 120  # frames per camera: before the lag, and while cam-1's frames lag
SHORT = 50  # quality min_window: frames a camera must send after a frame to judge it


def _events(groups: list[list[object]]) -> list[Event]:
    return [e for g in groups for e in g if isinstance(e, Event)]


def _run(store: MonitorStore, evaluator: Evaluator, batches: list[list[Event]]) -> list[Event]:
    """Record each batch and evaluate after it, at its newest capture time."""
    out: list[Event] = []
    for batch in batches:
        store.record_many(batch)
        newest = max(e.captured_at for e in batch if isinstance(e, ImageCaptured))
        out.extend(evaluator.run_once(newest))
    return out


def test_labels_of_a_camera_whose_frames_lag_are_counted_once_its_frames_arrive(
    store: MonitorStore, quality_evaluator: Evaluator, site: EventFactory
) -> None:
    store.record(site.deployed("v1", baseline={"recall": 0.92, "precision": 0.95}))
    calm = simulate(site, np.random.default_rng(1), 0, CALM, cameras=CAMERAS)
    calm_batches = [_events(calm[i : i + 60]) for i in range(0, len(calm), 60)]
    lag = _events(simulate(site, np.random.default_rng(2), CALM, LAGGING, cameras=CAMERAS))
    late: list[Event] = [e for e in lag if isinstance(e, ImageCaptured) and e.camera_id == "cam-1"]
    first = [e for e in lag if not (isinstance(e, ImageCaptured) and e.camera_id == "cam-1")]
    # Every label and the peers' frames first; cam-1's frames ten at a time after them.
    lagging_batches = [first, *(late[i : i + 10] for i in range(0, len(late), 10))]

    events = _run(store, quality_evaluator, [*calm_batches, *lagging_batches])

    assert events == []  # nothing is wrong with the site
    # Every label is counted except, per camera, the newest SHORT frames' (no SHORT frames of
    # their camera after them yet: held). cam-1's lagging labels included.
    expected = len(CAMERAS) * (CALM + LAGGING - SHORT)
    assert store.cursor(f"performance-counted/{site.site_id}/v1") == expected
