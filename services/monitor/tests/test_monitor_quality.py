"""Per-camera data quality: one camera departing alone is data quality (with its camera id), all
cameras moving together is not; and the rejection-rate rule (Wilson lower bound)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from defectloop.common.events import DegradationKind
from defectloop.monitor import drift
from defectloop.monitor.drift import Observation, data_drift_signals
from defectloop.monitor.quality import (
    CameraWindow,
    camera_departures,
    camera_windows,
    isolated_cameras,
    quality_signals,
)
from defectloop.monitor.signals import Signal

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)
CAMERAS = ("cam-1", "cam-2", "cam-3")


def _frames(
    rng: np.random.Generator,
    camera: str,
    n: int,
    *,
    sharpness: float = 300.0,
    brightness: float = 160.0,
    start: int = 0,
) -> list[Observation]:
    return [
        Observation(
            camera,
            T0 + timedelta(seconds=start + i),
            {
                drift.SHARPNESS: float(rng.lognormal(np.log(sharpness), 0.2)),
                drift.BRIGHTNESS: float(rng.normal(brightness, 4.0)),
                drift.CONTRAST: float(rng.normal(40.0, 2.0)),
                drift.OBSTRUCTED: 0.0,
            },
        )
        for i in range(n)
    ]


def _site(
    rng: np.random.Generator, n: int, start: int = 0, **per_camera: dict[str, float]
) -> dict[str, CameraWindow]:
    return {
        c: CameraWindow(
            c, _frames(rng, c, n, start=start, **per_camera.get(c.replace("-", "_"), {}))
        )
        for c in CAMERAS
    }


def _signals(reference: dict[str, CameraWindow], current: dict[str, CameraWindow]) -> list[Signal]:
    return quality_signals(reference, current, site_id="A", model_version="v1")


def test_stable_cameras_give_no_breach() -> None:
    rng = np.random.default_rng(1)
    signals = _signals(_site(rng, 200), _site(rng, 100, start=200))
    assert [s.key.camera_id for s in signals] == list(CAMERAS)
    assert all(s.enough_data for s in signals)
    assert not any(s.breached for s in signals)
    assert all(s.within_tolerance for s in signals)


def test_one_blurred_camera_is_data_quality_naming_it() -> None:
    rng = np.random.default_rng(2)
    reference = _site(rng, 200)
    current = _site(rng, 100, start=200, cam_2={"sharpness": 60.0})
    signals = {s.key.camera_id: s for s in _signals(reference, current)}
    assert signals["cam-2"].breached
    assert signals["cam-2"].key.kind is DegradationKind.DATA_QUALITY
    assert signals["cam-2"].evidence["sharpness.effect"] > 0.9
    assert not signals["cam-1"].breached
    assert not signals["cam-3"].breached
    assert isolated_cameras(camera_departures(reference, current)) == {"cam-2"}


def test_all_cameras_darker_together_is_drift_not_quality() -> None:
    rng = np.random.default_rng(3)
    reference = _site(rng, 200)
    dark = {"brightness": 130.0}
    current = _site(rng, 100, start=200, cam_1=dark, cam_2=dark, cam_3=dark)
    assert not any(s.breached for s in _signals(reference, current))
    pooled = [o for w in current.values() for o in w.frames]
    ref_pooled = [o for w in reference.values() for o in w.frames]
    (site,) = data_drift_signals(ref_pooled, pooled, site_id="A", model_version="v1")
    assert site.breached


def test_rising_rejections_at_one_camera_are_data_quality() -> None:
    rng = np.random.default_rng(4)
    reference = _site(rng, 200)
    current = _site(rng, 100, start=200)
    current["cam-3"] = CameraWindow("cam-3", current["cam-3"].frames, {"too_blurry": 15})
    signals = {s.key.camera_id: s for s in _signals(reference, current)}
    assert signals["cam-3"].breached
    assert signals["cam-3"].evidence["rejection_ci_low"] > 0.02
    assert signals["cam-3"].sample_size == 115
    assert not signals["cam-1"].breached


def test_a_stray_rejection_is_noise() -> None:
    rng = np.random.default_rng(5)
    reference = _site(rng, 200)
    current = _site(rng, 100, start=200)
    current["cam-1"] = CameraWindow("cam-1", current["cam-1"].frames, {"too_dark": 1})
    assert not any(s.breached for s in _signals(reference, current))


def test_single_camera_site_classifies_only_rejections() -> None:
    rng = np.random.default_rng(6)
    reference = {"cam-1": CameraWindow("cam-1", _frames(rng, "cam-1", 200))}
    blurred = {"cam-1": CameraWindow("cam-1", _frames(rng, "cam-1", 100, sharpness=50.0))}
    rejecting = {"cam-1": CameraWindow("cam-1", _frames(rng, "cam-1", 100), {"uniform_frame": 20})}
    (metric_only,) = _signals(reference, blurred)
    (rejections,) = _signals(reference, rejecting)
    assert not metric_only.breached
    assert rejections.breached


def test_cameras_short_of_frames_are_not_enough_data() -> None:
    rng = np.random.default_rng(7)
    reference = _site(rng, 200)
    current = _site(rng, 20, start=200, cam_1={"sharpness": 10.0})
    assert not any(s.enough_data or s.breached for s in _signals(reference, current))


@dataclass(frozen=True)
class _Rejection:
    camera_id: str
    reason: str


def test_camera_windows_split_frames_and_rejections() -> None:
    rng = np.random.default_rng(8)
    frames = _frames(rng, "cam-1", 3) + _frames(rng, "cam-2", 2)
    windows = camera_windows(
        frames, [_Rejection("cam-2", "too_dark"), _Rejection("cam-9", "empty")]
    )
    assert sorted(windows) == ["cam-1", "cam-2", "cam-9"]
    assert windows["cam-2"].n_offered == 3
    assert windows["cam-9"].rejections == {"empty": 1}
