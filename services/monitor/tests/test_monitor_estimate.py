"""Label-free estimate: isotonic calibration vs scikit-learn, CBPE tracking the realised recall
under covariate shift, ATC reproducing the labelled accuracy, the alert rule, and the documented
failure under concept shift (new defects scored as a confident OK)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import DegradationKind
from defectloop.monitor.estimate import (
    ESTIMATE_METRIC,
    Calibration,
    estimate,
    estimate_signals,
    fit_calibration,
)

pytestmark = pytest.mark.unit

THRESHOLD = 0.5
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _scores(
    rng: np.random.Generator, n: int, *, no_box: float = 0.5, high: float = 1.0
) -> np.ndarray:
    """Decision scores: 0 when the model draws no box, else uniform in [0.3, high]."""
    s = rng.uniform(0.3, high, n)
    s[rng.random(n) < no_box] = 0.0
    return s


def _truth(rng: np.random.Generator, scores: np.ndarray) -> np.ndarray:
    """Truth with a known calibration: P(defective | s) = s, and 0.05 when there is no box."""
    p = np.where(scores == 0.0, 0.05, scores)
    return (rng.random(scores.size) < p).astype(float)


def _recall(scores: np.ndarray, truth: np.ndarray) -> float:
    decided = scores >= THRESHOLD
    return float((decided & (truth == 1)).sum() / (truth == 1).sum())


def _calibration(seed: int = 0, n: int = 2_000) -> tuple[Calibration, np.ndarray]:
    rng = np.random.default_rng(seed)
    s = _scores(rng, n)
    return fit_calibration(s, _truth(rng, s), THRESHOLD), s


def test_isotonic_fit_matches_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    s = np.round(_scores(rng, 500), 2)  # ties, as real scores have
    y = _truth(rng, s)
    cal = fit_calibration(s, y, THRESHOLD)
    grid = np.linspace(0, 1, 41)
    expected = IsotonicRegression(out_of_bounds="clip").fit(s, y).predict(grid)
    np.testing.assert_allclose(cal.probability(grid), expected, atol=1e-9)
    assert np.all(np.diff(cal.probabilities) >= 0)


def test_cbpe_tracks_realised_recall_without_and_with_covariate_shift() -> None:
    cal, _ = _calibration()
    rng = np.random.default_rng(2)
    same = _scores(rng, 20_000)
    shifted = _scores(rng, 20_000, no_box=0.3, high=0.7)  # more defects just under the threshold
    for s in (same, shifted):
        truth = _truth(rng, s)
        assert estimate(cal, s).recall == pytest.approx(_recall(s, truth), abs=0.03)
    assert estimate(cal, shifted).recall < estimate(cal, same).recall - 0.15


def test_cbpe_misses_a_new_defect_the_model_does_not_see() -> None:
    cal, _ = _calibration()
    rng = np.random.default_rng(3)
    s = _scores(rng, 20_000)
    truth = _truth(rng, s)
    unseen = (s == 0.0) & (rng.random(s.size) < 0.4)  # new defects, scored as "no box"
    truth[unseen] = 1.0
    assert _recall(s, truth) < 0.55
    assert estimate(cal, s).recall > _recall(s, truth) + 0.2


def test_atc_reproduces_the_labelled_accuracy_and_falls_with_confidence() -> None:
    rng = np.random.default_rng(4)
    s = _scores(rng, 3_000)
    y = _truth(rng, s)
    cal = fit_calibration(s, y, THRESHOLD)
    assert estimate(cal, s).atc_accuracy == pytest.approx(cal.measured_accuracy, abs=1e-9)
    shifted = _scores(rng, 20_000, no_box=0.1, high=0.7)  # fewer confident images
    truth = _truth(rng, shifted)
    realised = float(np.mean((shifted >= THRESHOLD) == (truth == 1)))
    # ATC only orders images by confidence: it follows the direction, not the size, of the fall.
    assert realised < cal.measured_accuracy - 0.1
    assert estimate(cal, shifted).atc_accuracy < cal.measured_accuracy - 0.1


def test_atc_on_fresh_images_of_the_same_distribution_matches_their_accuracy() -> None:
    rng = np.random.default_rng(8)
    s = _scores(rng, 300)  # continuous scores: new images fall between calibration knots
    cal = fit_calibration(s, _truth(rng, s), THRESHOLD)
    fresh = _scores(rng, 20_000)
    truth = _truth(rng, fresh)
    realised = float(np.mean((fresh >= THRESHOLD) == (truth == 1)))
    assert estimate(cal, fresh).atc_accuracy == pytest.approx(realised, abs=0.04)


def test_calibration_refuses_mismatched_vectors() -> None:
    with pytest.raises(InvalidInputError):
        fit_calibration([0.1, 0.9], [1.0], THRESHOLD)


def _signal(cal: Calibration | None, reference: np.ndarray, scores: np.ndarray):  # type: ignore[no-untyped-def]
    (signal,) = estimate_signals(
        cal, reference, scores, site_id="A", model_version="v1", window_start=T0, window_end=T0
    )
    return signal


def test_no_shift_no_warning_and_a_recall_drop_warns() -> None:
    cal, reference = _calibration()
    rng = np.random.default_rng(5)
    quiet = _signal(cal, reference, _scores(rng, 200))
    drop = _signal(cal, reference, _scores(rng, 200, no_box=0.3, high=0.7))
    assert quiet.enough_data
    assert not quiet.breached
    assert quiet.within_tolerance
    assert drop.breached
    assert drop.key.kind is DegradationKind.PREDICTION_DRIFT
    assert drop.key.metric == ESTIMATE_METRIC
    assert drop.value < drop.threshold < drop.baseline


def test_too_few_calibration_labels_is_not_enough_data() -> None:
    cal, reference = _calibration(n=40)
    signal = _signal(cal, reference, _scores(np.random.default_rng(6), 300, no_box=0.9))
    assert not signal.enough_data
    assert not signal.breached
    assert not _signal(None, reference, reference).enough_data
