"""Per-camera data quality: one camera departing from its own baseline while the others do not.

A blurred, darkened or obstructed camera makes the model divert good parts (precision drops) or
miss defects; retraining on its frames would teach the model the fault. So a departure confined
to one camera is its own incident kind, ``data_quality``, naming the camera; the trainer ignores
that kind and ops gets the alert (notes R7). Two rules, each against the camera's own reference
window (its first frames after the site's model was deployed, chosen by the caller):

(a) rejection rate at ingest (``image.rejected`` over frames offered): the Wilson 95 % lower bound
    of the current rate is above the reference rate + ``rejection_margin`` (2 points: a handful
    of rejections on a few hundred frames is noise, a sustained rise is not);
(b) quality metrics of accepted frames (sharpness, brightness, contrast, obstructed share): the
    same two-sample tests as data drift (:mod:`defectloop.monitor.drift`: KS, Bonferroni over the
    features at ``alpha``, effect floor ``min_effect``).

A departure counts for data quality only when it is *isolated*: fewer than ``max_peer_share`` of
the site's other cameras (with enough frames) depart on the same feature. When the cameras move
together it is the site's input that changed (a lamp, a new part), which is data drift, computed
on the pooled cameras. A site with one camera cannot tell the two apart from the metrics, so there
only rule (a) is classified as data quality; its metric shifts are left to data drift.

The cameras this returns as isolated are also the ones the site's drift and performance signals
leave out (``exclude_cameras``): the blurred camera's precision drop must not open a performance
incident.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from defectloop.common.events import DegradationKind
from defectloop.monitor.drift import (
    BRIGHTNESS,
    CONTRAST,
    OBSTRUCTED,
    SHARPNESS,
    DriftPolicy,
    FeatureTest,
    Observation,
    data_drift_tests,
    judge,
)
from defectloop.monitor.signals import Signal, SignalKey
from defectloop.monitor.stats import wilson_interval

QUALITY_FEATURES: tuple[str, ...] = (SHARPNESS, BRIGHTNESS, CONTRAST, OBSTRUCTED)
QUALITY_METRIC = "camera_quality"
REJECTION_RATE = "rejection_rate"
_NO_TIME = datetime.min.replace(tzinfo=UTC)  # an empty window has no time span


class QualityPolicy(BaseModel):
    """Decision rule of the per-camera data-quality detector (notes R7)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(0.01, gt=0, lt=1, description="Family-wise error over the features.")
    min_effect: float = Field(0.1, gt=0, le=1, description="KS D floor for a metric departure.")
    exit_alpha: float = Field(0.05, gt=0, lt=1, description="Per-feature level to close.")
    exit_effect: float = Field(0.1, gt=0, le=1, description="KS D a closing camera stays under.")
    rejection_margin: float = Field(
        0.02, gt=0, lt=1, description="Rise of the rejection rate (Wilson lower bound) to enter."
    )
    min_reference: int = Field(100, ge=10, description="Frames needed in a camera's reference.")
    min_window: int = Field(50, ge=10, description="Frames needed in a camera's window.")
    max_peer_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="A departure shared by at least this share of the other cameras is site-wide.",
    )

    def drift_policy(self) -> DriftPolicy:
        return DriftPolicy(
            alpha=self.alpha,
            min_effect=self.min_effect,
            exit_alpha=self.exit_alpha,
            exit_effect=self.exit_effect,
            min_reference=self.min_reference,
            min_window=self.min_window,
        )


@dataclass(frozen=True)
class CameraWindow:
    """A camera's accepted frames (as observations) and its rejections by reason, in a window."""

    camera_id: str
    frames: Sequence[Observation]
    rejections: Mapping[str, int] = field(default_factory=dict)

    @property
    def n_rejected(self) -> int:
        return sum(self.rejections.values())

    @property
    def n_offered(self) -> int:
        return len(self.frames) + self.n_rejected


class RejectionLike(Protocol):
    """What quality needs of an ingest rejection (the store's ``Rejection``)."""

    @property
    def camera_id(self) -> str: ...
    @property
    def reason(self) -> str: ...


def camera_windows(
    frames: Iterable[Observation], rejections: Iterable[RejectionLike] = ()
) -> dict[str, CameraWindow]:
    """Split a site's observations and rejections of one window by camera."""
    by_camera: dict[str, list[Observation]] = defaultdict(list)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for frame in frames:
        by_camera[frame.camera_id].append(frame)
    for rejection in rejections:
        counts[rejection.camera_id][str(rejection.reason)] += 1
    return {
        camera: CameraWindow(camera, by_camera.get(camera, []), dict(counts.get(camera, {})))
        for camera in sorted(by_camera.keys() | counts.keys())
    }


@dataclass(frozen=True)
class CameraDeparture:
    """How one camera compares with its own reference, and whether its peers moved too."""

    camera_id: str
    tests: tuple[FeatureTest, ...]
    departed: tuple[str, ...]
    isolated: tuple[str, ...]
    settled: bool
    rejection_rate: float
    rejection_ci: tuple[float, float]
    baseline_rejection_rate: float
    n_offered: int

    def value(self) -> float:
        effects = {t.feature: t.effect for t in self.tests}
        effects[REJECTION_RATE] = max(0.0, self.rejection_rate - self.baseline_rejection_rate)
        pool = [effects[f] for f in self.isolated] or list(effects.values())
        return max(pool, default=0.0)

    def evidence(self, per_test_alpha: float) -> dict[str, float]:
        out: dict[str, float] = {
            "alpha_per_test": per_test_alpha,
            "rejection_rate": self.rejection_rate,
            "rejection_ci_low": self.rejection_ci[0],
            "rejection_ci_high": self.rejection_ci[1],
            "baseline_rejection_rate": self.baseline_rejection_rate,
        }
        for t in self.tests:
            out[f"{t.feature}.effect"] = round(t.effect, 6)
            out[f"{t.feature}.p"] = t.p_value
        return out


def _enough(ref: CameraWindow | None, cur: CameraWindow | None, policy: QualityPolicy) -> bool:
    return (
        ref is not None
        and cur is not None
        and ref.n_offered >= policy.min_reference
        and cur.n_offered >= policy.min_window
    )


def departure(
    reference: CameraWindow | None, current: CameraWindow | None, policy: QualityPolicy
) -> CameraDeparture | None:
    """How one camera's window compares with its reference (isolation not judged yet: see
    :func:`isolated_features`); None without enough frames on either side."""
    if reference is None or current is None or not _enough(reference, current, policy):
        return None
    ref, cur = reference, current
    drift_policy = policy.drift_policy()
    tests = [
        t
        for t in data_drift_tests(ref.frames, cur.frames, drift_policy)
        if t.feature in QUALITY_FEATURES
    ]
    verdict = judge(tests, drift_policy)
    baseline = ref.n_rejected / ref.n_offered
    rate = cur.n_rejected / cur.n_offered
    ci = wilson_interval(cur.n_rejected, cur.n_offered)
    rejection_up = ci[0] > baseline + policy.rejection_margin
    departed = (*verdict.drifted, *((REJECTION_RATE,) if rejection_up else ()))
    settled = verdict.settled and rate <= baseline + policy.rejection_margin
    return CameraDeparture(
        cur.camera_id, tuple(tests), departed, (), settled, rate, ci, baseline, cur.n_offered
    )


def isolated_features(
    found: CameraDeparture, peers: Sequence[CameraDeparture], policy: QualityPolicy
) -> tuple[str, ...]:
    """The features ``found`` departs on that fewer than ``max_peer_share`` of ``peers`` (the
    site's other cameras with enough frames, over the same time) depart on too."""
    isolated = []
    for feature in found.departed:
        if not peers:
            # One camera: only the rejection rate can be told apart from a site-wide drift.
            if feature == REJECTION_RATE:
                isolated.append(feature)
            continue
        moving = sum(feature in p.departed for p in peers) / len(peers)
        if moving < policy.max_peer_share:
            isolated.append(feature)
    return tuple(isolated)


def camera_departures(
    reference: Mapping[str, CameraWindow],
    current: Mapping[str, CameraWindow],
    policy: QualityPolicy | None = None,
) -> dict[str, CameraDeparture]:
    """Each camera with enough frames on both sides, with its isolated departures marked."""
    policy = policy or QualityPolicy()
    found = {
        camera: dep
        for camera in sorted(current)
        if (dep := departure(reference.get(camera), current.get(camera), policy)) is not None
    }
    return {
        camera: replace(
            dep,
            isolated=isolated_features(dep, [d for c, d in found.items() if c != camera], policy),
        )
        for camera, dep in found.items()
    }


def isolated_cameras(departures: Mapping[str, CameraDeparture]) -> frozenset[str]:
    """Cameras departing on their own: leave them out of the site's drift and performance."""
    return frozenset(c for c, d in departures.items() if d.isolated)


def quality_signals(
    reference: Mapping[str, CameraWindow],
    current: Mapping[str, CameraWindow],
    *,
    site_id: str,
    model_version: str | None,
    policy: QualityPolicy | None = None,
) -> list[Signal]:
    """One ``data_quality`` signal per camera of ``current`` (metric ``camera_quality``)."""
    policy = policy or QualityPolicy()
    departures = camera_departures(reference, current, policy)
    per_test = policy.alpha / len(QUALITY_FEATURES)
    signals = []
    for camera in sorted(current):
        window = current[camera]
        times = [o.at for o in window.frames]
        dep = departures.get(camera)
        signals.append(
            Signal(
                key=SignalKey(
                    site_id, model_version, DegradationKind.DATA_QUALITY, QUALITY_METRIC, camera
                ),
                value=0.0 if dep is None else dep.value(),
                baseline=0.0,
                threshold=policy.min_effect,
                breached=dep is not None and bool(dep.isolated),
                within_tolerance=dep is not None and dep.settled,
                enough_data=dep is not None,
                window_start=min(times, default=_NO_TIME),
                window_end=max(times, default=_NO_TIME),
                sample_size=window.n_offered,
                evidence={} if dep is None else dep.evidence(per_test),
            )
        )
    return signals
