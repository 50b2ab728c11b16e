"""Data and prediction drift: the statistics against independent computations, and each rule on
synthetic windows (no drift, a shift, the effect floor, Bonferroni, excluded cameras)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from scipy import stats

from defectloop.common.events import DegradationKind, ScoredBox
from defectloop.monitor import drift
from defectloop.monitor.drift import (
    DriftPolicy,
    FeatureTest,
    Observation,
    categorical_test,
    data_drift_signals,
    judge,
    ks_test,
    observations,
    prediction_drift_signals,
)
from defectloop.monitor.signals import Signal

pytestmark = pytest.mark.unit

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _images(
    rng: np.random.Generator,
    n: int,
    *,
    cameras: tuple[str, ...] = ("cam-1", "cam-2", "cam-3"),
    brightness: float = 160.0,
    sharpness: float = 300.0,
    start: int = 0,
    box_scale: float = 1.0,
    defect_rate: float = 0.6,
) -> list[Observation]:
    out = []
    for i in range(n):
        defective = rng.random() < defect_rate
        k = int(rng.integers(1, 4)) if defective else 0
        score = float(rng.uniform(0.55, 0.95)) if defective else float(rng.choice([0.0, 0.35]))
        out.append(
            Observation(
                camera_id=cameras[i % len(cameras)],
                at=T0 + timedelta(seconds=start + i),
                values={
                    drift.BRIGHTNESS: float(rng.normal(brightness, 4.0)),
                    drift.CONTRAST: float(rng.normal(40.0, 2.0)),
                    drift.SHARPNESS: float(rng.lognormal(np.log(sharpness), 0.2)),
                    drift.OBSTRUCTED: float(rng.choice([0.0, 0.0, 0.0, 1 / 64])),
                    drift.OUTLIER_SCORE: float(rng.gamma(10.0, 0.1)),
                    drift.DECISION_SCORE: score,
                    drift.DEFECTIVE: float(score >= 0.5),
                    drift.OUTLIER: float(rng.random() < 0.01),
                    drift.BOXES_PER_IMAGE: float(k),
                    drift.SUB_THRESHOLD: float(0.25 <= score < 0.5),
                },
                box_classes=tuple(str(rng.choice(["scratch", "spot", "crack"])) for _ in range(k)),
                box_areas=tuple(float(rng.uniform(0.001, 0.01)) * box_scale for _ in range(k)),
            )
        )
    return out


def _signal(
    reference: list[Observation], current: list[Observation], exclude: frozenset[str] = frozenset()
) -> Signal:
    (signal,) = data_drift_signals(
        reference, current, site_id="A", model_version="v1", exclude_cameras=exclude
    )
    return signal


def test_ks_test_matches_the_ecdf_gap_and_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, 300), rng.normal(0.3, 1, 200)
    result = ks_test("x", a, b)
    grid = np.concatenate([a, b])
    ecdf_a = np.searchsorted(np.sort(a), grid, side="right") / a.size
    ecdf_b = np.searchsorted(np.sort(b), grid, side="right") / b.size
    assert result.effect == pytest.approx(np.abs(ecdf_a - ecdf_b).max())
    assert result.p_value == pytest.approx(stats.ks_2samp(a, b).pvalue)
    assert (result.n_reference, result.n_current) == (300, 200)


def test_categorical_test_is_pearson_chi2_with_total_variation_effect() -> None:
    reference = ["scratch"] * 50 + ["spot"] * 30 + ["crack"] * 20
    current = ["scratch"] * 20 + ["spot"] * 30 + ["crack"] * 50
    result = categorical_test("cls", reference, current)
    observed = np.array([[20, 50, 30], [50, 20, 30]], float)  # crack, scratch, spot
    expected = observed.sum(1, keepdims=True) * observed.sum(0, keepdims=True) / observed.sum()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert result.p_value == pytest.approx(stats.chi2.sf(chi2, df=2))
    assert result.effect == pytest.approx(0.3)  # |0.5-0.2| + |0.3-0.3| + |0.2-0.5|, halved


def test_categorical_test_of_one_category_cannot_differ() -> None:
    result = categorical_test("defective", [0.0] * 10, [0.0] * 20)
    assert (result.effect, result.p_value) == (0.0, 1.0)


def test_bonferroni_divides_alpha_over_the_features() -> None:
    tests = [FeatureTest(f"f{i}", "ks", 0.3, 0.003, 500, 200) for i in range(5)]
    tests[0] = FeatureTest("f0", "ks", 0.3, 0.001, 500, 200)
    verdict = judge(tests, DriftPolicy(alpha=0.01))
    assert verdict.alpha_per_test == pytest.approx(0.002)
    assert verdict.drifted == ("f0",)


def test_effect_floor_ignores_significant_but_tiny_shifts() -> None:
    rng = np.random.default_rng(2)
    tiny = ks_test("x", rng.normal(0, 1, 40_000), rng.normal(0.06, 1, 40_000))
    assert tiny.p_value < 1e-6
    assert tiny.effect < 0.1
    assert judge([tiny], DriftPolicy()).drifted == ()


def test_exit_rule_is_stricter_than_not_entering() -> None:
    # Not significant at the entry level (0.005), but still at the exit level (0.05).
    moderate = FeatureTest("brightness", "ks", 0.15, 0.01, 500, 200)
    verdict = judge([moderate], DriftPolicy(alpha=0.005))
    assert verdict.drifted == ()
    assert not verdict.settled


def test_no_drift_gives_no_breach() -> None:
    rng = np.random.default_rng(3)
    reference, current = _images(rng, 600), _images(rng, 300, start=600)
    signal = _signal(reference, current)
    assert signal.enough_data
    assert not signal.breached
    assert signal.within_tolerance
    assert signal.key.kind is DegradationKind.DATA_DRIFT
    assert signal.key.camera_id is None


def test_a_lighting_change_on_every_camera_is_data_drift() -> None:
    rng = np.random.default_rng(4)
    reference, current = _images(rng, 600), _images(rng, 300, start=600, brightness=150.0)
    signal = _signal(reference, current)
    assert signal.breached
    assert signal.value > 0.5
    assert signal.evidence["brightness.p"] < signal.evidence["alpha_per_test"]
    assert signal.evidence["contrast.p"] > signal.evidence["alpha_per_test"]


def _blur(window: list[Observation], cameras: set[str]) -> list[Observation]:
    return [
        Observation(o.camera_id, o.at, {**o.values, drift.SHARPNESS: 20.0})
        if o.camera_id in cameras
        else o
        for o in window
    ]


def test_one_camera_alone_does_not_make_the_site_drift() -> None:
    rng = np.random.default_rng(5)
    reference = _images(rng, 600)
    one = _blur(_images(rng, 300, start=600), {"cam-2"})
    signal = _signal(reference, one)
    assert signal.evidence["sharpness.p"] < 1e-6  # the pooled test sees it...
    assert not signal.breached  # ...but it does not survive leaving cam-2 out
    assert not _signal(reference, one, frozenset({"cam-2"})).breached


def test_two_cameras_of_three_moving_is_site_drift() -> None:
    rng = np.random.default_rng(9)
    reference = _images(rng, 600)
    signal = _signal(reference, _blur(_images(rng, 300, start=600), {"cam-1", "cam-2"}))
    assert signal.breached
    assert signal.value > 0.5


def test_single_camera_site_keeps_the_pooled_verdict() -> None:
    rng = np.random.default_rng(10)
    reference = _images(rng, 300, cameras=("cam-1",))
    current = _blur(_images(rng, 150, cameras=("cam-1",), start=300), {"cam-1"})
    assert _signal(reference, current).breached


def test_small_windows_are_not_enough_data() -> None:
    rng = np.random.default_rng(6)
    signal = _signal(_images(rng, 600), _images(rng, 50, brightness=100.0))
    assert not signal.enough_data
    assert not signal.breached


def test_prediction_drift_sees_larger_boxes_and_more_defects() -> None:
    rng = np.random.default_rng(7)
    reference = _images(rng, 600)
    same = _images(rng, 300, start=600)
    larger = _images(rng, 300, start=600, box_scale=2.0)
    more = _images(rng, 300, start=600, defect_rate=0.9)
    quiet, boxes, defects = (
        prediction_drift_signals(reference, current, site_id="A", model_version="v1")[0]
        for current in (same, larger, more)
    )
    assert quiet.enough_data
    assert not quiet.breached
    assert boxes.breached
    assert boxes.evidence["box_area.effect"] > 0.3
    assert defects.breached
    assert defects.evidence["defective.effect"] > 0.2
    assert boxes.key.kind is DegradationKind.PREDICTION_DRIFT


@dataclass(frozen=True)
class _Captured:
    image_id: str
    camera_id: str
    captured_at: datetime
    width: int
    height: int
    sharpness: float
    brightness: float
    contrast: float
    obstructed_fraction: float


@dataclass(frozen=True)
class _Prediction:
    image_id: str
    camera_id: str
    captured_at: datetime
    decision_score: float
    decision_threshold: float
    defective: bool
    outlier: bool
    outlier_score: float
    boxes: tuple[ScoredBox, ...]


def test_observations_join_captures_and_predictions_by_image() -> None:
    box = ScoredBox(label="spot", x=0, y=0, w=10, h=20, score=0.3)
    captured = [_Captured("i1", "cam-1", T0, 100, 200, 50.0, 120.0, 30.0, 0.0)]
    predictions = [
        _Prediction("i1", "cam-1", T0, 0.3, 0.5, False, False, 1.2, (box,)),
        _Prediction("i0", "cam-2", T0 - timedelta(seconds=1), 0.0, 0.5, False, True, 9.0, ()),
    ]
    first, second = observations(captured, predictions)
    assert first.camera_id == "cam-2"
    assert drift.BRIGHTNESS not in first.values
    assert first.values[drift.OUTLIER] == 1.0
    assert second.values[drift.BRIGHTNESS] == 120.0
    assert second.values[drift.SUB_THRESHOLD] == 1.0
    assert second.box_areas == (pytest.approx(200 / 20_000),)
    assert second.box_classes == ("spot",)


def _clustered(rng: np.random.Generator, n: int, start: int = 0) -> list[Observation]:
    """Images whose boxes come in clusters: 1 box, or 8 copies of one area (a split defect)."""
    out = []
    for i in range(n):
        k = int(rng.choice([0, 1, 8]))
        area = float(rng.uniform(0.001, 0.01))
        out.append(
            Observation(
                "cam-1",
                T0 + timedelta(seconds=start + i),
                {drift.DEFECTIVE: float(k > 0)},
                box_classes=("spot",) * k,
                box_areas=(area,) * k,
            )
        )
    return out


def test_clustered_boxes_are_tested_per_image_not_per_box() -> None:
    breaches = 0
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        reference, current = _clustered(rng, 300), _clustered(rng, 200, start=300)
        (signal,) = prediction_drift_signals(reference, current, site_id="A", model_version="v")
        breaches += signal.breached
    assert breaches <= 2  # alpha 0.01 on 40 windows; per-box samples breach far more often


def test_a_class_taking_over_is_boxes_per_class_drift() -> None:
    rng = np.random.default_rng(11)
    reference = _images(rng, 600)
    current = [
        Observation(o.camera_id, o.at, o.values, ("crack",) * len(o.box_classes), o.box_areas)
        for o in _images(rng, 300, start=600)
    ]
    (signal,) = prediction_drift_signals(reference, current, site_id="A", model_version="v1")
    assert signal.breached
    assert signal.evidence["boxes_of_crack.effect"] > 0.3
