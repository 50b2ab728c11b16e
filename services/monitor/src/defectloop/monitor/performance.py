"""A site's measured performance from human labels, and the performance signals.

**Which labels.** Headline figures use only the ``random`` annotation stratum: uncertain and
outlier labels are chosen *because* the model is likely wrong on them, and "actively selecting
labels introduces a bias" (Active Testing, notes §3.3). :func:`random_stratum` is that filter.

**Figures.** Image-level precision and recall carry Wilson 95 % intervals (never Wald, notes §3.1);
F1 (not a single proportion) a seeded percentile bootstrap; box-level AP@0.5 is the
``defectloop.vision.metrics`` computation (pycocotools-compatible), not a second implementation.
Every figure carries its n.

**The entry/exit rule** (notes R2/R3, defaults in :class:`PerformancePolicy`): over the newest
≤ 300 random-stratum images of at most 7 days, with ≥ 50 images and ≥ 20 in the metric's
denominator (defective images for recall, predicted-defective for precision),

* *breached* when the Wilson **upper** bound is below ``baseline - 0.05`` **and** the sequential
  CUSUM below is in alarm;
* *within tolerance* when the Wilson **lower** bound is at least ``baseline - 0.02``.

A fall from 0.92 to 0.70 is caught at about 30 positives (upper bound ≈ 0.83 < 0.87); a 3-point
drop is never claimed on 30 (±0.11 at n = 30, notes §3.1).

**Why a CUSUM as well: repeated looks.** The Wilson rule is a fixed-n test evaluated again every
few labels on overlapping windows; ten looks at nominal 5 % already give 20 % false positives
(notes §3.2). The one-sided Bernoulli CUSUM (``stats.bernoulli_cusum``) runs over every
random-stratum label since the model was deployed, on the per-item error indicator (a missed
defective image for recall, a false alarm among predicted-defective images for precision), against
the error rate **frozen** from the model's baseline (``1 - baseline``), with river's defaults
(slack 0.5σ, threshold 5σ, ≥ 30 observations). Its alarm rate under no change is a property of the
detector alone (its average run length), not of how often we look. The two are combined with AND:
the CUSUM budgets the looks (an incident cannot start more often than the CUSUM false-alarms), the
Wilson bound keeps the effect material (the drop exceeds the tolerance with 95 % confidence, which
the CUSUM alone does not say). The incident state machine's M-of-N on top lowers the rate further.

**The window after the change.** While the CUSUM is in alarm, its excursion start dates the change
(reported as ``change_point_at``: where fresh labels for retraining count from), and the Wilson
rule looks only at the window's labels since then, when those alone meet the minimum sample:
otherwise labels from before the change dilute a 20-point drop into a 10-point one and detection
waits for the window to turn over. That window is chosen by the detector, so it is biased low
under no drift; the AND with the CUSUM and the minimum sample bound what that costs, and
:func:`simulate_rule` measures it.

**Measured** (``simulate_rule``, defaults, baseline recall = precision = 0.9, prevalence 0.6, an
evaluation every 10 labels): with no drift, 25 incidents in 300,000 labels = **0.083 per 1,000
labels** (95 % upper bound 0.116), i.e. 0.25 per site per 30 days at 100 random labels a day
(notes R2 asks ≤ 1); the CUSUMs alone alarm 5.7 times per 1,000 labels (about one per 210
observations each, far from the Gaussian ARL₀ ≈ 938 of notes §3.2: Bernoulli errors at 10 % are
skewed). A recall drop 0.9 → 0.7 is detected in a median of 80 labels (≈ 48 defective), at most
180; 0.9 → 0.8 in a median of 160 labels (43 of 50 runs within 500).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field
from scipy.stats import chi2

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import Box, DegradationKind, ModelRole, ScoredBox
from defectloop.monitor import stats
from defectloop.monitor.incidents import IncidentPolicy, IncidentTrack, TransitionKind, step
from defectloop.monitor.signals import Signal, SignalKey
from defectloop.vision.metrics import ImageBoxes, average_precision, decision_metrics

RANDOM_STRATUM = "random"


@dataclass(frozen=True)
class LabelledPrediction:
    """One model's prediction on one image joined with the human label of that image."""

    site_id: str
    camera_id: str
    model_version: str
    role: ModelRole
    image_id: str
    truth_defective: bool
    predicted_defective: bool
    decision_score: float
    truth_boxes: tuple[Box, ...]
    predicted_boxes: tuple[ScoredBox, ...]
    sampling_reason: str | None
    captured_at: datetime
    labelled_at: datetime
    annotator: str


@dataclass(frozen=True)
class Figure:
    """A measured value with its 95 % interval and the n it stands on (value None when n is 0)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


@dataclass(frozen=True)
class ImageMetrics:
    """Image-level decision metrics of one window; ``n`` of recall = defective images, of
    precision = predicted-defective images, of F1 = images."""

    precision: Figure
    recall: Figure
    f1: Figure
    n_images: int
    n_positive: int
    tp: int
    fp: int
    fn: int
    tn: int


@dataclass(frozen=True)
class BoxMetrics:
    """Box-level AP at IoU 0.5 (None when the window holds no ground-truth box)."""

    map50: float | None
    per_class: dict[str, float | None]
    n_images: int
    n_truth_boxes: int


class PerformancePolicy(BaseModel):
    """Defaults of the performance rule (notes R2-R4); all overridable per site."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    metrics: tuple[Literal["recall", "precision"], ...] = Field(
        ("recall", "precision"), description="Baseline metrics watched (recall and/or precision)."
    )
    window_images: int = Field(300, ge=1, description="Newest random-stratum images per window.")
    window_days: float = Field(7.0, gt=0, description="Oldest image a window may hold, in days.")
    min_images: int = Field(50, ge=1, description="Labelled images below which nothing is said.")
    min_positive: int = Field(
        20, ge=1, description="Minimum denominator: defective (recall) / predicted (precision)."
    )
    entry_tolerance: float = Field(
        0.05, ge=0, le=1, description="Breach: Wilson upper bound < baseline - this."
    )
    exit_tolerance: float = Field(
        0.02, ge=0, le=1, description="Recovered: Wilson lower bound >= baseline - this."
    )
    confidence: float = Field(0.95, gt=0, lt=1, description="Interval confidence level.")
    cusum_slack: float = Field(stats.CUSUM_SLACK, ge=0, description="CUSUM allowance (σ).")
    cusum_threshold: float = Field(stats.CUSUM_THRESHOLD, gt=0, description="CUSUM h (σ).")
    cusum_min_samples: int = Field(
        stats.CUSUM_MIN_SAMPLES, ge=1, description="No CUSUM alarm before this many errors-or-not."
    )


def random_stratum(rows: Iterable[LabelledPrediction]) -> list[LabelledPrediction]:
    """The rows whose label was drawn at random: the only unbiased estimate of performance."""
    return [r for r in rows if r.sampling_reason == RANDOM_STRATUM]


def _f1(
    truth: npt.NDArray[np.bool_], pred: npt.NDArray[np.bool_], axis: int = -1
) -> npt.NDArray[np.float64]:
    tp = np.sum(truth & pred, axis=axis)
    wrong = np.sum(truth != pred, axis=axis)
    denom = 2 * tp + wrong
    return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), np.nan)


def _proportion(successes: int, n: int, confidence: float) -> Figure:
    if n == 0:
        return Figure(value=None, ci_low=None, ci_high=None, n=0)
    low, high = stats.wilson_interval(successes, n, confidence)
    return Figure(value=successes / n, ci_low=low, ci_high=high, n=n)


def image_metrics(rows: Sequence[LabelledPrediction], confidence: float = 0.95) -> ImageMetrics:
    """Precision, recall (Wilson) and F1 (bootstrap) of the image-level decision over ``rows``."""
    truth = np.array([r.truth_defective for r in rows], dtype=bool)
    pred = np.array([r.predicted_defective for r in rows], dtype=bool)
    m = decision_metrics(pred, truth)
    f1 = Figure(value=None, ci_low=None, ci_high=None, n=len(rows))
    if 2 * m.tp + m.fp + m.fn > 0:
        low, high = stats.paired_bootstrap_interval(_f1, (truth, pred), confidence=confidence)
        f1 = Figure(value=m.f1, ci_low=low, ci_high=high, n=len(rows))
    return ImageMetrics(
        precision=_proportion(m.tp, m.tp + m.fp, confidence),
        recall=_proportion(m.tp, m.tp + m.fn, confidence),
        f1=f1,
        n_images=len(rows),
        n_positive=m.tp + m.fn,
        tp=m.tp,
        fp=m.fp,
        fn=m.fn,
        tn=m.tn,
    )


def box_ap50(rows: Sequence[LabelledPrediction]) -> BoxMetrics:
    """AP@0.5 per class and its mean over classes with ground truth (``vision.metrics``)."""
    classes = sorted(
        {b.label for r in rows for b in r.truth_boxes}
        | {b.label for r in rows for b in r.predicted_boxes}
    )
    index = {name: i for i, name in enumerate(classes)}
    preds = [
        ImageBoxes.from_lists(
            [(b.x, b.y, b.w, b.h) for b in r.predicted_boxes],
            [index[b.label] for b in r.predicted_boxes],
            [b.score for b in r.predicted_boxes],
        )
        for r in rows
    ]
    truths = [
        ImageBoxes.from_lists(
            [(b.x, b.y, b.w, b.h) for b in r.truth_boxes], [index[b.label] for b in r.truth_boxes]
        )
        for r in rows
    ]
    result = average_precision(preds, truths, len(classes), iou_threshold=0.5)
    n_truth = sum(result.n_ground_truth)
    return BoxMetrics(
        map50=result.mean_ap if n_truth else None,
        per_class=dict(zip(classes, result.per_class, strict=True)),
        n_images=len(rows),
        n_truth_boxes=n_truth,
    )


def _window(
    rows: Sequence[LabelledPrediction], policy: PerformancePolicy, now: datetime | None
) -> list[LabelledPrediction]:
    end = now if now is not None else rows[-1].captured_at
    oldest = end - timedelta(days=policy.window_days)
    recent = [r for r in rows if oldest <= r.captured_at <= end]
    return recent[-policy.window_images :]


def _errors(rows: Sequence[LabelledPrediction], metric: str) -> tuple[list[int], list[bool]]:
    """Indices into ``rows`` of the metric's denominator and whether each one is an error."""
    if metric == "recall":
        picked = [i for i, r in enumerate(rows) if r.truth_defective]
        return picked, [not rows[i].predicted_defective for i in picked]
    picked = [i for i, r in enumerate(rows) if r.predicted_defective]
    return picked, [not rows[i].truth_defective for i in picked]


@dataclass(frozen=True)
class _Tally:
    """One window's count for one metric and its Wilson interval."""

    rows: Sequence[LabelledPrediction]
    denominator: int
    hits: int
    ci_low: float
    ci_high: float
    enough: bool


def _tally(rows: Sequence[LabelledPrediction], metric: str, policy: PerformancePolicy) -> _Tally:
    picked, errors = _errors(rows, metric)
    hits = len(picked) - sum(errors)
    low, high = stats.wilson_bounds(hits, len(picked), policy.confidence)
    enough = len(rows) >= policy.min_images and len(picked) >= policy.min_positive
    return _Tally(rows, len(picked), hits, float(low), float(high), enough)


def _metric_signal(
    key: SignalKey,
    baseline: float,
    history: Sequence[LabelledPrediction],
    window: Sequence[LabelledPrediction],
    policy: PerformancePolicy,
    now: datetime | None,
) -> Signal:
    seq_index, seq_errors = _errors(history, key.metric)
    cusum = stats.bernoulli_cusum(
        seq_errors,
        1.0 - baseline,
        slack=policy.cusum_slack,
        threshold=policy.cusum_threshold,
        min_samples=policy.cusum_min_samples,
    )
    change_at = None
    if cusum.change_index is not None and cusum.change_index < len(seq_index):
        change_at = history[seq_index[cusum.change_index]].captured_at
    regular = _tally(window, key.metric, policy)
    decided = regular
    if change_at is not None:
        # Labels from before the change dilute the window (a 300-image window half before a
        # 20-point drop reads a 10-point one); once the CUSUM dates the change, the Wilson rule
        # looks only after it, if that part alone meets the minimum sample.
        since_change = _tally([r for r in window if r.captured_at >= change_at], key.metric, policy)
        if since_change.enough:
            decided = since_change
    threshold = baseline - policy.entry_tolerance
    rows = decided.rows
    start = rows[0].captured_at if rows else (now or history[-1].captured_at)
    end = rows[-1].captured_at if rows else start
    return Signal(
        key=key,
        value=decided.hits / decided.denominator if decided.denominator else 0.0,
        baseline=baseline,
        threshold=threshold,
        breached=decided.enough and decided.ci_high < threshold and cusum.alarm,
        within_tolerance=decided.enough and decided.ci_low >= baseline - policy.exit_tolerance,
        enough_data=regular.enough,
        window_start=start,
        window_end=end,
        sample_size=len(rows),
        n_positive=sum(r.truth_defective for r in rows),
        ci_low=decided.ci_low,
        ci_high=decided.ci_high,
        change_point_at=change_at,
        evidence={
            "denominator": float(decided.denominator),
            "window_images": float(len(regular.rows)),
            "window_value": regular.hits / regular.denominator if regular.denominator else 0.0,
            "window_ci_low": regular.ci_low,
            "window_ci_high": regular.ci_high,
            "cusum_statistic": cusum.statistic,
            "cusum_peak": cusum.excursion_peak,
            "cusum_threshold": policy.cusum_threshold,
            "cusum_alarm": float(cusum.alarm),
            "cusum_observations": float(cusum.n),
            "reference_error_rate": cusum.reference_rate,
        },
    )


def performance_signals(
    rows: Iterable[LabelledPrediction],
    *,
    site_id: str,
    model_version: str,
    baseline: Mapping[str, float],
    policy: PerformancePolicy,
    camera_id: str | None = None,
    exclude_cameras: frozenset[str] = frozenset(),
    now: datetime | None = None,
) -> list[Signal]:
    """One ``performance`` signal per watched metric that has a baseline.

    ``rows``: the model's labelled predictions at the site since it was deployed there (any order;
    only the random stratum is used; the CUSUM needs the whole history, the Wilson rule only the
    newest window). ``camera_id`` restricts to one camera; ``exclude_cameras`` drops cameras with an
    open data-quality incident, so a blurred camera does not read as a model regression. ``now``
    anchors the time window (default: the newest image). No usable rows give no signal.
    """
    history = sorted(
        (
            r
            for r in random_stratum(rows)
            if r.site_id == site_id
            and r.model_version == model_version
            and (camera_id is None or r.camera_id == camera_id)
            and r.camera_id not in exclude_cameras
        ),
        key=lambda r: (r.captured_at, r.image_id),
    )
    if not history:
        return []
    window = _window(history, policy, now)
    signals = []
    for metric in policy.metrics:
        if metric not in baseline:
            continue
        key = SignalKey(site_id, model_version, DegradationKind.PERFORMANCE, metric, camera_id)
        signals.append(_metric_signal(key, baseline[metric], history, window, policy, now))
    return signals


@dataclass(frozen=True)
class RuleSimulation:
    """What the full rule (signals + incident state machine) did on simulated random labels.

    ``incidents``: incidents opened (over both metrics). ``cusum_alarms``: times a CUSUM went
    into alarm, ``wilson_breaches``: evaluations whose Wilson bound alone breached — the two
    halves of the rule, to show what each contributes. ``detection_delays``: per run, labels from
    the injected drift to the first incident on recall (None: not detected).
    """

    incidents: int
    labels: int
    runs: int
    evaluations: int
    cusum_alarms: int
    wilson_breaches: int
    detection_delays: tuple[int | None, ...] = ()

    @property
    def per_1000_labels(self) -> float:
        return 1000.0 * self.incidents / self.labels if self.labels else 0.0

    @property
    def per_1000_labels_upper(self) -> float:
        """One-sided 95 % Poisson upper bound of the rate (the "rule of three" at 0 events)."""
        bound = float(chi2.ppf(0.95, 2 * (self.incidents + 1))) / 2.0
        return 1000.0 * bound / self.labels if self.labels else math.inf

    @property
    def cusum_alarms_per_1000_labels(self) -> float:
        return 1000.0 * self.cusum_alarms / self.labels if self.labels else 0.0


def simulate_rule(
    policy: PerformancePolicy | None = None,
    incident_policy: IncidentPolicy | None = None,
    *,
    recall: float = 0.9,
    precision: float = 0.9,
    prevalence: float = 0.6,
    labels_per_run: int = 2000,
    runs: int = 50,
    evaluate_every: int = 10,
    labels_per_day: float = 100.0,
    drift_after: int | None = None,
    drifted_recall: float | None = None,
    seed: int = 0,
) -> RuleSimulation:
    """Simulate random-stratum labels of one (site, model) per run and run the monitor's rule.

    The model's true recall and precision equal its baseline (defect prevalence 0.6: the
    simulator's ``no_defect_share`` is 0.4) until ``drift_after`` labels, after which true recall
    is ``drifted_recall``. The monitor evaluates every ``evaluate_every`` new labels (notes R3)
    with :func:`performance_signals` and ``incidents.step``, exactly as deployed. Seeded numpy:
    the same arguments always give the same result. With no drift, ``per_1000_labels`` is the
    no-drift false-alarm rate of the defaults.
    """
    policy = policy or PerformancePolicy()
    incident_policy = incident_policy or IncidentPolicy()
    false_positive_rate = prevalence * recall * (1 - precision) / (precision * (1 - prevalence))
    if not 0 <= false_positive_rate <= 1:
        raise InvalidInputError("recall, precision and prevalence give a FPR outside [0, 1]")
    rng = np.random.default_rng(seed)
    baseline = {"recall": recall, "precision": precision}
    start = datetime(2026, 1, 1, tzinfo=UTC)
    incidents = evaluations = cusum_alarms = wilson_breaches = 0
    delays: list[int | None] = []
    true_recall = np.full(labels_per_run, recall)
    if drift_after is not None and drifted_recall is not None:
        true_recall[drift_after:] = drifted_recall
    for run in range(runs):
        truth = rng.random(labels_per_run) < prevalence
        draw = rng.random(labels_per_run)
        predicted = np.where(truth, draw < true_recall, draw < false_positive_rate)
        rows = [
            LabelledPrediction(
                site_id="sim",
                camera_id="cam-1",
                model_version=f"run-{run}",
                role=ModelRole.CHAMPION,
                image_id=f"{run}-{i}",
                truth_defective=bool(truth[i]),
                predicted_defective=bool(predicted[i]),
                decision_score=1.0 if predicted[i] else 0.0,
                truth_boxes=(),
                predicted_boxes=(),
                sampling_reason=RANDOM_STRATUM,
                captured_at=start + timedelta(days=i / labels_per_day),
                labelled_at=start + timedelta(days=i / labels_per_day),
                annotator="sim",
            )
            for i in range(labels_per_run)
        ]
        tracks: dict[SignalKey, IncidentTrack] = {}
        alarmed: dict[SignalKey, bool] = {}
        delay: int | None = None
        for end in range(evaluate_every, labels_per_run + 1, evaluate_every):
            for signal in performance_signals(
                rows[:end],
                site_id="sim",
                model_version=f"run-{run}",
                baseline=baseline,
                policy=policy,
            ):
                evaluations += 1
                alarm = signal.evidence["cusum_alarm"] > 0
                cusum_alarms += alarm and not alarmed.get(signal.key, False)
                alarmed[signal.key] = alarm
                wilson_breaches += signal.enough_data and (signal.ci_high or 0.0) < signal.threshold
                track = tracks.get(signal.key) or IncidentTrack(key=signal.key)
                tracks[signal.key], transition = step(track, signal, incident_policy)
                if transition is not None and transition.kind is TransitionKind.OPENED:
                    incidents += 1
                    if delay is None and drift_after is not None and signal.key.metric == "recall":
                        delay = end - drift_after
        delays.append(delay)
    return RuleSimulation(
        incidents=incidents,
        labels=runs * labels_per_run,
        runs=runs,
        evaluations=evaluations,
        cusum_alarms=cusum_alarms,
        wilson_breaches=wilson_breaches,
        detection_delays=tuple(delays) if drift_after is not None else (),
    )
