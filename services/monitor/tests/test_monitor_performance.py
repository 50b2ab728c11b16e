"""Measured performance and the performance signals, against statsmodels, scipy and pycocotools."""

from __future__ import annotations

import contextlib
import io
from dataclasses import replace
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from pydantic import ValidationError
from scipy.stats import bootstrap as scipy_bootstrap
from statsmodels.stats.proportion import proportion_confint

from defectloop.common.events import Box, DegradationKind, ScoredBox
from defectloop.monitor.performance import (
    LabelledPrediction,
    PerformancePolicy,
    box_ap50,
    image_metrics,
    performance_signals,
    random_stratum,
    simulate_rule,
)
from defectloop.monitor.signals import Signal
from defectloop.vision.metrics import decision_metrics

from .conftest import LABELLED

pytestmark = pytest.mark.unit

BASE = LABELLED
T0 = BASE.captured_at


def rows_from(
    truth: np.ndarray, predicted: np.ndarray, **fields: object
) -> list[LabelledPrediction]:
    """One random-stratum row per image, captured a minute apart."""
    return [
        replace(
            BASE,
            image_id=f"img-{i}",
            truth_defective=bool(t),
            predicted_defective=bool(p),
            captured_at=T0 + timedelta(minutes=i),
            **fields,  # type: ignore[arg-type]
        )
        for i, (t, p) in enumerate(zip(truth, predicted, strict=True))
    ]


def simulated(n: int, recall: float, seed: int, fpr: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.6
    draw = rng.random(n)
    return truth, np.where(truth, draw < recall, draw < fpr)


def test_image_metrics_match_vision_and_statsmodels() -> None:
    truth, predicted = simulated(240, 0.85, seed=1)
    m = image_metrics(rows_from(truth, predicted))
    ref = decision_metrics(predicted, truth)
    assert (m.tp, m.fp, m.fn, m.tn) == (ref.tp, ref.fp, ref.fn, ref.tn)
    assert m.recall.value == pytest.approx(ref.recall)
    assert m.precision.value == pytest.approx(ref.precision)
    assert m.f1.value == pytest.approx(ref.f1)
    assert (m.recall.ci_low, m.recall.ci_high) == pytest.approx(
        proportion_confint(ref.tp, ref.tp + ref.fn, method="wilson")
    )
    assert (m.precision.ci_low, m.precision.ci_high) == pytest.approx(
        proportion_confint(ref.tp, ref.tp + ref.fp, method="wilson")
    )
    assert (m.n_images, m.n_positive) == (240, int(truth.sum()))
    assert (m.recall.n, m.precision.n, m.f1.n) == (ref.tp + ref.fn, ref.tp + ref.fp, 240)


def test_f1_interval_agrees_with_scipy_bootstrap() -> None:
    truth, predicted = simulated(300, 0.8, seed=2)
    m = image_metrics(rows_from(truth, predicted))

    def f1(t: np.ndarray, p: np.ndarray, axis: int = -1) -> np.ndarray:
        tp = np.sum(t * p, axis=axis)
        return np.asarray(2 * tp / (2 * tp + np.sum(t != p, axis=axis)))

    ref = scipy_bootstrap(
        (truth.astype(float), predicted.astype(float)),
        f1,
        paired=True,
        vectorized=True,
        method="percentile",
        rng=np.random.default_rng(9),
    ).confidence_interval
    assert (m.f1.ci_low, m.f1.ci_high) == pytest.approx((ref.low, ref.high), abs=0.015)
    assert m.f1.ci_low is not None
    assert m.f1.ci_high is not None
    assert m.f1.value is not None
    assert m.f1.ci_low < m.f1.value < m.f1.ci_high


def test_undefined_figures_say_so_with_their_n() -> None:
    m = image_metrics(rows_from(np.zeros(10, bool), np.zeros(10, bool)))
    assert (m.recall.value, m.recall.n) == (None, 0)
    assert (m.precision.value, m.precision.n) == (None, 0)
    assert (m.f1.value, m.f1.n) == (None, 10)


def _coco_ap50(rows: list[LabelledPrediction]) -> float:
    names = sorted({b.label for r in rows for b in (*r.truth_boxes, *r.predicted_boxes)})
    cat = {n: i + 1 for i, n in enumerate(names)}
    gt = COCO()
    gt.dataset = {
        "images": [{"id": i + 1, "width": 512, "height": 512} for i in range(len(rows))],
        "categories": [{"id": c, "name": n} for n, c in cat.items()],
        "annotations": [
            {
                "id": len(rows) * 100 + i * 10 + j,
                "image_id": i + 1,
                "category_id": cat[b.label],
                "bbox": [b.x, b.y, b.w, b.h],
                "area": b.w * b.h,
                "iscrowd": 0,
            }
            for i, r in enumerate(rows)
            for j, b in enumerate(r.truth_boxes)
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(
            [
                {
                    "image_id": i + 1,
                    "category_id": cat[b.label],
                    "bbox": [b.x, b.y, b.w, b.h],
                    "score": b.score,
                }
                for i, r in enumerate(rows)
                for b in r.predicted_boxes
            ]
        )
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[1])


def test_box_ap50_matches_pycocotools() -> None:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(30):
        truth = tuple(
            Box(label=str(rng.choice(["scratch", "spot"])), x=float(x), y=float(y), w=40.0, h=30.0)
            for x, y in rng.integers(0, 400, size=(rng.integers(0, 3), 2))
        )
        predicted = tuple(
            ScoredBox(
                label=b.label,
                x=b.x + float(rng.normal(0, 6)),
                y=b.y,
                w=b.w,
                h=b.h,
                score=float(rng.random()),
            )
            for b in truth
            if rng.random() < 0.8
        ) + tuple(
            ScoredBox(
                label="spot", x=float(x), y=float(y), w=25.0, h=25.0, score=float(rng.random()) / 2
            )
            for x, y in rng.integers(0, 400, size=(rng.integers(0, 2), 2))
        )
        rows.append(
            replace(BASE, image_id=f"img-{i}", truth_boxes=truth, predicted_boxes=predicted)
        )
    result = box_ap50(rows)
    assert result.map50 == pytest.approx(_coco_ap50(rows), abs=1e-9)
    assert set(result.per_class) == {"scratch", "spot"}
    assert result.n_truth_boxes == sum(len(r.truth_boxes) for r in rows)


def test_box_ap50_without_ground_truth_is_undefined() -> None:
    result = box_ap50(
        [replace(BASE, predicted_boxes=(ScoredBox(label="spot", x=1, y=1, w=5, h=5, score=0.9),))]
    )
    assert result.map50 is None


def test_random_stratum_keeps_only_random_labels() -> None:
    rows = [replace(BASE, sampling_reason=r) for r in ("random", "uncertain", "outlier", None)]
    assert random_stratum(rows) == rows[:1]


def signals_of(rows: list[LabelledPrediction], **kwargs: Any) -> dict[str, Signal]:
    out = performance_signals(
        rows,
        site_id="A",
        model_version="v1",
        baseline={"recall": 0.9, "precision": 0.95},
        policy=PerformancePolicy(),
        **kwargs,
    )
    return {s.key.metric: s for s in out}


def test_no_signal_without_rows() -> None:
    assert signals_of([]) == {}


def test_below_the_minimum_sample_there_is_not_enough_data() -> None:
    truth, predicted = simulated(40, 0.3, seed=5)  # a disaster, but only 40 images
    recall = signals_of(rows_from(truth, predicted))["recall"]
    assert not recall.enough_data
    assert not recall.breached


def test_a_large_recall_drop_breaches_and_is_dated() -> None:
    before = simulated(300, 0.9, seed=6)
    after = simulated(120, 0.55, seed=7)
    rows = rows_from(np.concatenate([before[0], after[0]]), np.concatenate([before[1], after[1]]))
    recall = signals_of(rows)["recall"]
    assert recall.enough_data
    assert recall.breached
    assert recall.key.kind is DegradationKind.PERFORMANCE
    assert recall.ci_high is not None
    assert recall.ci_high < recall.threshold == pytest.approx(0.85)
    change = recall.change_point_at
    assert change is not None
    assert T0 + timedelta(minutes=250) <= change <= T0 + timedelta(minutes=320)
    assert recall.window_start >= change
    assert recall.evidence["cusum_alarm"] == 1.0


def test_at_baseline_nothing_breaches_and_recall_is_within_tolerance() -> None:
    truth, predicted = simulated(300, 0.97, seed=8, fpr=0.0)
    signals = signals_of(rows_from(truth, predicted))
    assert set(signals) == {"recall", "precision"}
    for s in signals.values():
        assert s.enough_data
        assert not s.breached
    assert signals["recall"].within_tolerance


def test_wilson_alone_does_not_breach_without_the_cusum() -> None:
    # 25 defective images, 40 % recall: the Wilson bound is far below the baseline, but the
    # sequential test has seen fewer than its 30 observations, so the looks are not yet budgeted
    truth = np.array([True] * 25 + [False] * 30)
    predicted = np.array([True] * 10 + [False] * 45)
    recall = signals_of(rows_from(truth, predicted))["recall"]
    assert recall.enough_data
    assert recall.ci_high is not None
    assert recall.ci_high < recall.threshold
    assert not recall.breached


def test_only_random_labels_and_the_right_site_model_and_camera_count() -> None:
    truth, predicted = simulated(200, 0.9, seed=10)
    rows = rows_from(truth, predicted)
    noise = [replace(r, sampling_reason="uncertain", image_id=r.image_id + "u") for r in rows]
    noise += [replace(r, model_version="v0", image_id=r.image_id + "v") for r in rows]
    noise += [replace(r, camera_id="cam-2", image_id=r.image_id + "c") for r in rows]
    ours = signals_of(rows + noise, camera_id="cam-1")["recall"]
    assert ours.sample_size == 200
    assert ours.key.camera_id == "cam-1"
    excluded = signals_of(rows + noise, exclude_cameras=frozenset({"cam-2"}))["recall"]
    assert excluded.sample_size == 200


def test_window_is_the_newest_images_within_the_days() -> None:
    truth, predicted = simulated(500, 0.9, seed=11)
    recall = signals_of(rows_from(truth, predicted))["recall"]
    assert recall.sample_size == 300
    assert recall.window_end == T0 + timedelta(minutes=499)
    later = signals_of(rows_from(truth, predicted), now=T0 + timedelta(days=7, minutes=400))
    assert later["recall"].sample_size == 100


def test_a_metric_without_baseline_is_not_watched() -> None:
    truth, predicted = simulated(100, 0.9, seed=12)
    out = performance_signals(
        rows_from(truth, predicted),
        site_id="A",
        model_version="v1",
        baseline={"recall": 0.9},
        policy=PerformancePolicy(),
    )
    assert [s.key.metric for s in out] == ["recall"]


def test_policy_watches_only_metrics_it_can_test() -> None:
    with pytest.raises(ValidationError):
        PerformancePolicy.model_validate({"metrics": ["map50"]})


def test_rule_simulation_is_deterministic() -> None:
    first = simulate_rule(runs=2, labels_per_run=300, seed=3)
    assert first == simulate_rule(runs=2, labels_per_run=300, seed=3)
    assert first.labels == 600
    assert first.evaluations == 2 * 30 * 2  # every 10 labels, recall and precision
    assert first.per_1000_labels_upper > first.per_1000_labels


def test_rule_simulation_detects_a_large_drop() -> None:
    result = simulate_rule(runs=2, labels_per_run=600, drift_after=300, drifted_recall=0.5, seed=4)
    assert all(d is not None and 0 < d <= 300 for d in result.detection_delays)
