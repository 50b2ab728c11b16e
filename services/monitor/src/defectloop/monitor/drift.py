"""Data drift and prediction drift of a site: a window of images against a reference window.

Each image becomes an :class:`Observation` (its camera, its capture time, a few numbers measured
at ingest and by the model, its predicted boxes). A window of observations is compared with the
site's reference window feature by feature, with a two-sample test per feature:

- continuous features (brightness, contrast, sharpness, obstructed share, the embedding's outlier
  score; the decision score, the mean predicted box area of an image): the two-sample
  Kolmogorov-Smirnov test (``scipy.stats.ks_2samp``); its effect size is the KS statistic D
  (largest gap between the two empirical CDFs, 0-1);
- categorical features (image defective or not, boxes per image 0/1/2/3+, boxes of each class
  per image 0/1/2+, outlier flag, decision score in the sub-threshold band): the chi-squared test
  of homogeneity (``scipy.stats.chi2_contingency``); its effect size is the total variation
  distance between the two frequency tables (0-1; for a yes/no feature it is the difference of
  the two rates, which is also what D would be).

A feature has drifted when its p-value is below ``alpha / number of tested features`` (Bonferroni:
the chance of any false positive among the features stays at most ``alpha``; alibi-detect's
default) **and** its effect size is above ``min_effect`` (river KSWIN's 0.1 floor: with thousands
of images every tiny difference is significant, Evidently#50). Defaults, notes §2 and R6:
``alpha = 0.01``, ``min_effect = 0.1``, windows of ≥ 100 images against a reference of ≥ 200.

One signal per kind and site (metric ``input_features`` for data drift, ``prediction_features``
for prediction drift), not one per feature: a lighting change moves brightness and contrast at
once and is one incident. The signal's value is the largest effect among drifted features (else
among all), its threshold ``min_effect``, the per-feature statistics and p-values are its
evidence. It is *within tolerance* (the exit rule) only when no feature is significant at the
looser, uncorrected ``exit_alpha`` with an effect above ``exit_effect`` — harder to meet than
"not breached", which is the hysteresis a closing incident needs.

Reference: the bundle manifest carries no image statistics (only the embedding's per-dimension
mean/std and the outlier threshold, which the outlier score already measures against), so the
reference window is the site's first images after the model was deployed (chosen by the caller).
Cameras with an open or isolated data-quality departure (:mod:`defectloop.monitor.quality`) are
left out of the site's pool (``exclude_cameras``): one blurred camera is a data-quality incident,
not a drift of the site.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats

from defectloop.common.events import DegradationKind
from defectloop.monitor.signals import Signal, SignalKey

# Feature names (keys of Observation.values).
BRIGHTNESS = "brightness"
CONTRAST = "contrast"
SHARPNESS = "sharpness"
OBSTRUCTED = "obstructed_fraction"
OUTLIER_SCORE = "outlier_score"
DECISION_SCORE = "decision_score"
DEFECTIVE = "defective"
OUTLIER = "outlier"
BOXES_PER_IMAGE = "boxes_per_image"
SUB_THRESHOLD = "sub_threshold_band"
BOX_AREA = "box_area"  # per image: mean box area / image area
BOXES_OF = "boxes_of_"  # + class name, per image: that class's boxes 0, 1, 2+

DATA_CONTINUOUS: tuple[str, ...] = (BRIGHTNESS, CONTRAST, SHARPNESS, OBSTRUCTED, OUTLIER_SCORE)
PREDICTION_CONTINUOUS: tuple[str, ...] = (DECISION_SCORE,)
PREDICTION_CATEGORICAL: tuple[str, ...] = (DEFECTIVE, BOXES_PER_IMAGE, OUTLIER, SUB_THRESHOLD)

DATA_DRIFT_METRIC = "input_features"
PREDICTION_DRIFT_METRIC = "prediction_features"

_NO_TIME = datetime.min.replace(tzinfo=UTC)  # an empty window has no time span
MAX_BOX_COUNT = 3  # boxes per image are binned 0, 1, 2, 3+ (chi-squared needs filled cells)
MAX_CLASS_COUNT = 2  # boxes of one class per image: 0, 1, 2+


@dataclass(frozen=True)
class Observation:
    """One image as the drift and quality detectors see it.

    ``values`` maps feature names (the constants above) to numbers; a feature that was not
    measured for this image (no prediction yet, say) is simply absent. ``box_classes`` and
    ``box_areas`` (box area / image area) describe the serving model's predicted boxes.
    """

    camera_id: str
    at: datetime
    values: Mapping[str, float]
    box_classes: tuple[str, ...] = ()
    box_areas: tuple[float, ...] = ()


class _BoxLike(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def w(self) -> float: ...
    @property
    def h(self) -> float: ...


class CapturedLike(Protocol):
    """What drift needs of an accepted image (the store's ``CapturedImage``)."""

    @property
    def image_id(self) -> str: ...
    @property
    def camera_id(self) -> str: ...
    @property
    def captured_at(self) -> datetime: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...
    @property
    def sharpness(self) -> float: ...
    @property
    def brightness(self) -> float: ...
    @property
    def contrast(self) -> float: ...
    @property
    def obstructed_fraction(self) -> float: ...


class PredictionLike(Protocol):
    """What drift needs of a prediction (``prediction.made``, the store's ``StoredPrediction``)."""

    @property
    def image_id(self) -> str: ...
    @property
    def camera_id(self) -> str: ...
    @property
    def captured_at(self) -> datetime: ...
    @property
    def decision_score(self) -> float: ...
    @property
    def decision_threshold(self) -> float: ...
    @property
    def defective(self) -> bool: ...
    @property
    def outlier(self) -> bool: ...
    @property
    def outlier_score(self) -> float: ...
    @property
    def boxes(self) -> Sequence[_BoxLike]: ...


def input_values(image: CapturedLike) -> dict[str, float]:
    """The data-drift features ingest measured (``image.captured``'s quality metrics)."""
    return {
        BRIGHTNESS: image.brightness,
        CONTRAST: image.contrast,
        SHARPNESS: image.sharpness,
        OBSTRUCTED: image.obstructed_fraction,
    }


def prediction_values(prediction: PredictionLike) -> dict[str, float]:
    """The prediction-drift features of one prediction (and the embedding's outlier score).

    The sub-threshold band (``threshold / 2 <= score < threshold``) is the near-miss mass of
    notes §1.5.6: defects that start to look unfamiliar slide into it before they are missed.
    """
    score, threshold = prediction.decision_score, prediction.decision_threshold
    return {
        OUTLIER_SCORE: prediction.outlier_score,
        DECISION_SCORE: score,
        DEFECTIVE: float(prediction.defective),
        OUTLIER: float(prediction.outlier),
        BOXES_PER_IMAGE: float(min(len(prediction.boxes), MAX_BOX_COUNT)),
        SUB_THRESHOLD: float(threshold / 2 <= score < threshold),
    }


def observations(
    captured: Iterable[CapturedLike], predictions: Iterable[PredictionLike] = ()
) -> list[Observation]:
    """One observation per image: its ingest metrics joined with its prediction by image id.

    An image seen on one side only keeps the features of that side; box areas need the image
    size, which comes with ``image.captured``. Oldest capture first.
    """
    images = {c.image_id: c for c in captured}
    preds = {p.image_id: p for p in predictions}
    out: list[tuple[datetime, str, Observation]] = []
    for image_id in images.keys() | preds.keys():
        image, pred = images.get(image_id), preds.get(image_id)
        values: dict[str, float] = {}
        classes: tuple[str, ...] = ()
        areas: tuple[float, ...] = ()
        camera, at = "", _NO_TIME
        if image is not None:
            values.update(input_values(image))
            camera, at = image.camera_id, image.captured_at
        if pred is not None:
            if image is None:
                camera, at = pred.camera_id, pred.captured_at
            values.update(prediction_values(pred))
            classes = tuple(b.label for b in pred.boxes)
            if image is not None:
                area = float(image.width * image.height)
                areas = tuple(b.w * b.h / area for b in pred.boxes)
        out.append((at, image_id, Observation(camera, at, values, classes, areas)))
    return [o for _, _, o in sorted(out, key=lambda row: (row[0], row[1]))]


@dataclass(frozen=True)
class FeatureTest:
    """One feature's two-sample test: effect size (KS D or total variation) and p-value."""

    feature: str
    test: Literal["ks", "chi2"]
    effect: float
    p_value: float
    n_reference: int
    n_current: int


def ks_test(feature: str, reference: npt.ArrayLike, current: npt.ArrayLike) -> FeatureTest:
    """Two-sample Kolmogorov-Smirnov test (two-sided, scipy's exact/asymptotic choice)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    result = stats.ks_2samp(ref, cur)
    return FeatureTest(
        feature, "ks", float(result.statistic), float(result.pvalue), ref.size, cur.size
    )


def categorical_test(
    feature: str, reference: Sequence[object], current: Sequence[object]
) -> FeatureTest:
    """Chi-squared test of homogeneity of two samples of categories; effect = total variation.

    Categories seen in neither sample do not exist; a feature with a single category in both
    samples cannot differ (p = 1, effect 0).
    """
    categories = sorted({str(c) for c in reference} | {str(c) for c in current})
    ref_counts = np.array([sum(1 for c in reference if str(c) == k) for k in categories], float)
    cur_counts = np.array([sum(1 for c in current if str(c) == k) for k in categories], float)
    n_ref, n_cur = int(ref_counts.sum()), int(cur_counts.sum())
    if len(categories) < 2 or n_ref == 0 or n_cur == 0:
        return FeatureTest(feature, "chi2", 0.0, 1.0, n_ref, n_cur)
    effect = 0.5 * float(np.abs(ref_counts / n_ref - cur_counts / n_cur).sum())
    p_value = float(stats.chi2_contingency(np.vstack([ref_counts, cur_counts])).pvalue)
    return FeatureTest(feature, "chi2", effect, p_value, n_ref, n_cur)


class DriftPolicy(BaseModel):
    """Decision rule of a drift detector (notes R6; per-site overrides allowed)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(
        0.01, gt=0, lt=1, description="Family-wise error over features (Bonferroni-divided)."
    )
    min_effect: float = Field(
        0.1, gt=0, le=1, description="Effect floor (KS D / total variation) to count as drift."
    )
    exit_alpha: float = Field(
        0.05, gt=0, lt=1, description="Per-feature level a closing incident must stay above."
    )
    exit_effect: float = Field(
        0.1, gt=0, le=1, description="Effect a closing incident must stay at or under."
    )
    min_reference: int = Field(200, ge=10, description="Images needed in the reference window.")
    min_window: int = Field(100, ge=10, description="Images needed in the current window.")
    min_boxes: int = Field(
        30, ge=5, description="Images with boxes needed on each side for the box features."
    )


@dataclass(frozen=True)
class DriftVerdict:
    """What the tests of one kind say together."""

    tests: tuple[FeatureTest, ...]
    alpha_per_test: float
    drifted: tuple[str, ...]
    settled: bool

    @property
    def value(self) -> float:
        """The largest effect among drifted features, else among all."""
        effects = [t.effect for t in self.tests if t.feature in self.drifted]
        return max(effects or [t.effect for t in self.tests], default=0.0)

    def evidence(self) -> dict[str, float]:
        out: dict[str, float] = {"alpha_per_test": self.alpha_per_test}
        for t in self.tests:
            out[f"{t.feature}.effect"] = round(t.effect, 6)
            out[f"{t.feature}.p"] = t.p_value
        return out


def judge(tests: Sequence[FeatureTest], policy: DriftPolicy) -> DriftVerdict:
    """Bonferroni across the tests, the effect floor, and the (stricter) exit rule."""
    per_test = policy.alpha / max(1, len(tests))
    drifted = tuple(
        t.feature for t in tests if t.p_value < per_test and t.effect > policy.min_effect
    )
    settled = not any(
        t.p_value < policy.exit_alpha and t.effect > policy.exit_effect for t in tests
    )
    return DriftVerdict(tuple(tests), per_test, drifted, settled)


def _column(window: Sequence[Observation], name: str) -> npt.NDArray[np.float64]:
    values = [o.values.get(name, math.nan) for o in window]
    column = np.asarray(values, dtype=np.float64)
    return column[np.isfinite(column)]


def _continuous_tests(
    reference: Sequence[Observation],
    current: Sequence[Observation],
    names: Iterable[str],
    minimum: int,
) -> list[FeatureTest]:
    tests = []
    for name in names:
        ref, cur = _column(reference, name), _column(current, name)
        if ref.size >= minimum and cur.size >= minimum:
            tests.append(ks_test(name, ref, cur))
    return tests


def _categorical_tests(
    reference: Sequence[Observation],
    current: Sequence[Observation],
    names: Iterable[str],
    minimum: int,
) -> list[FeatureTest]:
    tests = []
    for name in names:
        ref, cur = _column(reference, name), _column(current, name)
        if ref.size >= minimum and cur.size >= minimum:
            tests.append(categorical_test(name, ref.tolist(), cur.tolist()))
    return tests


def _mean_box_areas(window: Sequence[Observation]) -> list[float]:
    return [sum(o.box_areas) / len(o.box_areas) for o in window if o.box_areas]


def _class_counts(window: Sequence[Observation], label: str) -> list[int]:
    return [min(o.box_classes.count(label), MAX_CLASS_COUNT) for o in window]


def _box_tests(
    reference: Sequence[Observation], current: Sequence[Observation], policy: DriftPolicy
) -> list[FeatureTest]:
    """Box area and boxes per class, one value per *image*.

    The boxes of one image are not independent draws (a detector that splits a defect in two
    gives two similar boxes), so per-box samples make the tests see drift in noise (measured on
    the simulator with no drift: the per-box KS on areas breached in 3 of 80 evaluations). An
    image contributes the mean relative area of its boxes and, per class, its box count (0, 1, 2+).
    """
    ref_areas, cur_areas = _mean_box_areas(reference), _mean_box_areas(current)
    if min(len(ref_areas), len(cur_areas)) < policy.min_boxes:
        return []
    labels = sorted({c for o in (*reference, *current) for c in o.box_classes})
    return [
        ks_test(BOX_AREA, ref_areas, cur_areas),
        *(
            categorical_test(
                f"{BOXES_OF}{label}", _class_counts(reference, label), _class_counts(current, label)
            )
            for label in labels
        ),
    ]


def _without(window: Sequence[Observation], cameras: Collection[str]) -> list[Observation]:
    return [o for o in window if o.camera_id not in cameras]


def _signal(
    verdict: DriftVerdict | None,
    *,
    key: SignalKey,
    current: Sequence[Observation],
    policy: DriftPolicy,
) -> Signal:
    times = [o.at for o in current]
    start, end = (min(times), max(times)) if times else (_NO_TIME, _NO_TIME)
    if verdict is None or not verdict.tests:
        return Signal(
            key=key,
            value=0.0,
            baseline=0.0,
            threshold=policy.min_effect,
            breached=False,
            within_tolerance=False,
            enough_data=False,
            window_start=start,
            window_end=end,
            sample_size=len(current),
        )
    return Signal(
        key=key,
        value=verdict.value,
        baseline=0.0,
        threshold=policy.min_effect,
        breached=bool(verdict.drifted),
        within_tolerance=verdict.settled,
        enough_data=True,
        window_start=start,
        window_end=end,
        sample_size=len(current),
        evidence=verdict.evidence(),
    )


def _enough(
    reference: Sequence[Observation], current: Sequence[Observation], policy: DriftPolicy
) -> bool:
    return len(reference) >= policy.min_reference and len(current) >= policy.min_window


def data_drift_tests(
    reference: Sequence[Observation], current: Sequence[Observation], policy: DriftPolicy
) -> list[FeatureTest]:
    """KS per input feature (ingest quality metrics and the embedding's outlier score)."""
    return _continuous_tests(reference, current, DATA_CONTINUOUS, policy.min_window)


def prediction_drift_tests(
    reference: Sequence[Observation], current: Sequence[Observation], policy: DriftPolicy
) -> list[FeatureTest]:
    """Score distribution (KS), defect rate, boxes per image, outlier rate, sub-threshold band
    (chi-squared), and, with enough boxes, box area (KS) and boxes per class (chi-squared)."""
    return [
        *_continuous_tests(reference, current, PREDICTION_CONTINUOUS, policy.min_window),
        *_categorical_tests(reference, current, PREDICTION_CATEGORICAL, policy.min_window),
        *_box_tests(reference, current, policy),
    ]


def data_drift_signals(
    reference: Sequence[Observation],
    current: Sequence[Observation],
    *,
    site_id: str,
    model_version: str | None,
    policy: DriftPolicy | None = None,
    exclude_cameras: Collection[str] = (),
) -> list[Signal]:
    """One ``data_drift`` signal (metric ``input_features``) for the site's pooled cameras.

    A feature counts as the *site's* drift only if it still drifts with any one camera left out
    of both windows: one camera's fault (blur, a covered lens) is data quality, whichever of the
    two detectors sees it first. A site with a single camera keeps the pooled verdict.
    """
    policy = policy or DriftPolicy()
    reference, current = _without(reference, exclude_cameras), _without(current, exclude_cameras)
    key = SignalKey(site_id, model_version, DegradationKind.DATA_DRIFT, DATA_DRIFT_METRIC)
    if not _enough(reference, current, policy):
        return [_signal(None, key=key, current=current, policy=policy)]
    verdict = judge(data_drift_tests(reference, current, policy), policy)
    cameras = {o.camera_id for o in current}
    if verdict.drifted and len(cameras) > 1:
        shared = set(verdict.drifted)
        for camera in cameras:
            ref, cur = _without(reference, {camera}), _without(current, {camera})
            shared &= set(judge(data_drift_tests(ref, cur, policy), policy).drifted)
        verdict = replace(verdict, drifted=tuple(f for f in verdict.drifted if f in shared))
    return [_signal(verdict, key=key, current=current, policy=policy)]


def prediction_drift_signals(
    reference: Sequence[Observation],
    current: Sequence[Observation],
    *,
    site_id: str,
    model_version: str | None,
    policy: DriftPolicy | None = None,
    exclude_cameras: Collection[str] = (),
) -> list[Signal]:
    """One ``prediction_drift`` signal (metric ``prediction_features``) for the site."""
    policy = policy or DriftPolicy()
    reference, current = _without(reference, exclude_cameras), _without(current, exclude_cameras)
    key = SignalKey(
        site_id, model_version, DegradationKind.PREDICTION_DRIFT, PREDICTION_DRIFT_METRIC
    )
    verdict = (
        judge(prediction_drift_tests(reference, current, policy), policy)
        if _enough(reference, current, policy)
        else None
    )
    return [_signal(verdict, key=key, current=current, policy=policy)]
