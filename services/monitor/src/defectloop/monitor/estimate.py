"""Label-free estimate of a site's image-level recall and precision (CBPE, with ATC beside it).

Labels arrive late and few; the model's confidence arrives with every image. Notes §1.5:

1. per image, the score ``s`` is the prediction's ``decision_score`` (highest box score, 0 when
   there is no box) and the decision is ``s >= decision_threshold``;
2. calibration: an isotonic (monotone) fit of P(defective | s) on labelled images the model was
   evaluated on — the site's first random-stratum window after the deployment (only random labels
   are unbiased); never the training set (its scores are overconfident); a minimum of 50 images
   and 20 defective ones, the same floor as the measured figures;
3. CBPE (NannyML): expected TP = Σ_{decided defective} p, FP = Σ_{decided defective} (1 − p),
   FN = Σ_{decided OK} p, hence expected precision and recall of an unlabelled window;
4. ATC (Garg et al. 2022): a confidence threshold learnt on the labelled window so that the share
   of images above it equals the measured accuracy; the share above it in a new window estimates
   that window's accuracy (ties at the threshold count fractionally, since many images share the
   score 0).

Alert (notes R5): the window's estimated recall is below the mean − 3 σ of the estimate over
reference chunks of the same size (NannyML's threshold rule; the chunks are bootstrap resamples
of the reference window's scores, because a reference of six disjoint 200-image chunks would
hold the estimate back for days); it is back within tolerance at mean − 2 σ. This is only an
early warning of kind ``prediction_drift`` (metric ``estimated_recall``) that asks for labels.
It cannot measure: CBPE assumes calibration still holds (no concept drift). A new kind of defect
that the model does not see gets score 0 — a *confident* OK — so the expected misses stay at
their calibrated level and the estimated recall stays high while the real recall falls.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import isotonic_regression

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import DegradationKind
from defectloop.monitor.signals import Signal, SignalKey

ESTIMATE_METRIC = "estimated_recall"

FloatArray = npt.NDArray[np.float64]


class EstimatePolicy(BaseModel):
    """When the label-free estimate can be trusted enough to warn (notes R5)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_calibration_images: int = Field(50, ge=10, description="Labelled images to calibrate.")
    min_calibration_positive: int = Field(
        20, ge=1, description="Defective labelled images to calibrate."
    )
    min_window: int = Field(100, ge=10, description="Images in the estimated window.")
    sigmas: float = Field(3.0, gt=0, description="Alert below reference mean − sigmas·σ.")
    exit_sigmas: float = Field(2.0, gt=0, description="Back to normal above mean − this·σ.")
    n_bootstrap: int = Field(200, ge=20, description="Reference chunks resampled for σ.")
    seed: int = Field(0, description="Seed of the bootstrap (results are reproducible).")


@dataclass(frozen=True)
class Calibration:
    """Isotonic P(defective | score) and the ATC threshold, fitted on labelled images."""

    knots: FloatArray
    probabilities: FloatArray
    decision_threshold: float
    atc_threshold: float
    atc_tie_share: float
    n_images: int
    n_positive: int
    measured_recall: float
    measured_precision: float
    measured_accuracy: float

    def probability(self, scores: npt.ArrayLike) -> FloatArray:
        """Calibrated P(defective) of each score (linear between knots, flat outside)."""
        s = np.asarray(scores, dtype=np.float64)
        return np.interp(s, self.knots, self.probabilities)

    def confidence(self, scores: npt.ArrayLike) -> FloatArray:
        """ATC's confidence max(p, 1 - p), with p the isotonic *step* (the fitted level of the
        highest knot at or below the score): new images then share the calibration set's finite
        confidence levels, so the ties at the ATC threshold mean the same thing on both sides
        (interpolated levels would put every new image between two knots below the threshold).
        """
        s = np.asarray(scores, dtype=np.float64)
        index = np.clip(np.searchsorted(self.knots, s, side="right") - 1, 0, self.knots.size - 1)
        p = self.probabilities[index]
        return np.maximum(p, 1 - p)


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def _atc_threshold(confidence: FloatArray, accuracy: float) -> tuple[float, float]:
    """Threshold t and tie share q with P(c > t) + q·P(c = t) = accuracy on the labelled set."""
    values = np.unique(confidence)[::-1]
    n = confidence.size
    above = 0.0
    for t in values:
        at = float(np.sum(confidence == t)) / n
        if above + at >= accuracy:
            return float(t), (accuracy - above) / at
        above += at
    return float(values[-1]), 1.0


def fit_calibration(
    scores: npt.ArrayLike, truth_defective: npt.ArrayLike, decision_threshold: float
) -> Calibration:
    """Fit the isotonic calibration and the ATC threshold on labelled (random-stratum) images."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(truth_defective, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise InvalidInputError(
            f"calibration needs matching non-empty score and truth vectors, got {s.shape} "
            f"and {y.shape}"
        )
    knots, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=y) / counts
    fitted = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True).x
    decided = s >= decision_threshold
    tp = float(np.sum(decided & (y == 1)))
    fp = float(np.sum(decided & (y == 0)))
    fn = float(np.sum(~decided & (y == 1)))
    accuracy = float(np.mean(decided == (y == 1)))
    levels = np.asarray(fitted, dtype=np.float64)[inverse]  # the step at each labelled score
    t, q = _atc_threshold(np.maximum(levels, 1 - levels), accuracy)
    return Calibration(
        knots=knots,
        probabilities=np.asarray(fitted, dtype=np.float64),
        decision_threshold=decision_threshold,
        atc_threshold=t,
        atc_tie_share=q,
        n_images=int(s.size),
        n_positive=int(y.sum()),
        measured_recall=_ratio(tp, tp + fn),
        measured_precision=_ratio(tp, tp + fp),
        measured_accuracy=accuracy,
    )


@dataclass(frozen=True)
class Estimate:
    """Expected confusion counts of an unlabelled window and the figures they give."""

    n: int
    expected_tp: float
    expected_fp: float
    expected_fn: float
    recall: float
    precision: float
    f1: float
    atc_accuracy: float


def estimate(calibration: Calibration, scores: npt.ArrayLike) -> Estimate:
    """CBPE recall/precision/F1 and the ATC accuracy of a window of unlabelled scores."""
    s = np.asarray(scores, dtype=np.float64)
    p = calibration.probability(s)
    decided = s >= calibration.decision_threshold
    tp, fp, fn = float(p[decided].sum()), float((1 - p[decided]).sum()), float(p[~decided].sum())
    recall, precision = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    confidence = calibration.confidence(s)
    above = float(np.mean(confidence > calibration.atc_threshold)) if s.size else 0.0
    at = float(np.mean(confidence == calibration.atc_threshold)) if s.size else 0.0
    return Estimate(
        n=int(s.size),
        expected_tp=tp,
        expected_fp=fp,
        expected_fn=fn,
        recall=recall,
        precision=precision,
        f1=_ratio(2 * precision * recall, precision + recall),
        atc_accuracy=above + calibration.atc_tie_share * at,
    )


def reference_spread(
    calibration: Calibration,
    reference_scores: npt.ArrayLike,
    window_size: int,
    policy: EstimatePolicy | None = None,
) -> tuple[float, float]:
    """Mean and σ of the estimated recall over bootstrap chunks of ``window_size`` reference
    images: how much the estimate moves by chance alone at that window size."""
    policy = policy or EstimatePolicy()
    ref = np.asarray(reference_scores, dtype=np.float64)
    rng = np.random.default_rng(policy.seed)
    draws = [
        estimate(calibration, rng.choice(ref, size=window_size, replace=True)).recall
        for _ in range(policy.n_bootstrap)
    ]
    return float(np.mean(draws)), float(np.std(draws, ddof=1))


def estimate_signals(
    calibration: Calibration | None,
    reference_scores: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    site_id: str,
    model_version: str | None,
    window_start: datetime,
    window_end: datetime,
    policy: EstimatePolicy | None = None,
) -> list[Signal]:
    """One ``prediction_drift`` signal of metric ``estimated_recall`` for a window of scores.

    ``calibration`` is ``None`` while the site has too few random labels since the deployment;
    ``reference_scores`` are the decision scores of the reference window (all its images,
    labelled or not).
    """
    policy = policy or EstimatePolicy()
    s = np.asarray(scores, dtype=np.float64)
    ref = np.asarray(reference_scores, dtype=np.float64)
    key = SignalKey(site_id, model_version, DegradationKind.PREDICTION_DRIFT, ESTIMATE_METRIC)
    calibrated = (
        calibration is not None
        and calibration.n_images >= policy.min_calibration_images
        and calibration.n_positive >= policy.min_calibration_positive
    )
    if calibration is None or not calibrated or s.size < policy.min_window or ref.size == 0:
        return [
            Signal(
                key=key,
                value=0.0,
                baseline=0.0,
                threshold=0.0,
                breached=False,
                within_tolerance=False,
                enough_data=False,
                window_start=window_start,
                window_end=window_end,
                sample_size=int(s.size),
            )
        ]
    found = estimate(calibration, s)
    mean, sigma = reference_spread(calibration, ref, int(s.size), policy)
    threshold = mean - policy.sigmas * sigma
    return [
        Signal(
            key=key,
            value=found.recall,
            baseline=mean,
            threshold=threshold,
            breached=found.recall < threshold,
            within_tolerance=found.recall >= mean - policy.exit_sigmas * sigma,
            enough_data=True,
            window_start=window_start,
            window_end=window_end,
            sample_size=found.n,
            evidence={
                "estimated_precision": found.precision,
                "estimated_f1": found.f1,
                "atc_accuracy": found.atc_accuracy,
                "reference_sigma": sigma,
                "calibration_images": float(calibration.n_images),
                "calibration_positive": float(calibration.n_positive),
                "calibration_measured_recall": calibration.measured_recall,
            },
        )
    ]
