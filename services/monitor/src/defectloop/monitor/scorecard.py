"""The paired scorecard of a shadow/challenger against the site's champion.

Both models' predictions are joined to the **same** random-stratum labels (notes R11), so the
comparison is paired: the two models agree on most images, and a paired interval is much narrower
than comparing two independent recalls (Geti's unpaired z-test accepts a 5-point drop at n = 200,
notes §4.1).

* Recall: both models are scored on the same defective images, a paired 2×2 table. Difference
  (candidate − champion) with Newcombe's paired interval; "better" needs the one-sided exact
  McNemar p < ``alpha`` on the discordant images (notes R10).
* Precision: the denominators differ (each model's own predicted-defective images), so the
  difference has a seeded paired bootstrap over images (notes R10(b)).
* Verdict (defaults notes R11: ≥ 30 paired defective images, margin 0.02):
  ``not_enough_data`` below the minimum, or while an interval still straddles the margin;
  ``worse`` when a difference is not non-inferior and its upper bound is below 0;
  ``better`` when both are non-inferior (lower bound ≥ −margin) and recall is significantly better
  (McNemar) or precision is (bootstrap lower bound > 0); ``non_inferior`` otherwise.
* Decided right, defective and good images alike: ``better`` too when the candidate decides
  significantly more images right (one-sided exact McNemar on all discordant images) and gives up
  at most ``recall_margin`` of recall (point estimate) without being ``worse``. This is the repair
  of a precision incident: a champion that flags every part has a recall no candidate can beat,
  and the paired recall interval of a candidate missing one defect in 40 straddles the 0.02
  margin for hundreds of labels, while the false alarms it removes are plain to see.

Repeated looks: the caller should treat a ``better`` verdict as a promotion proposal that a human
(or the site's policy) confirms; the scorecard itself does not spend alpha across looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from defectloop.common.errors import InvalidInputError
from defectloop.monitor import stats
from defectloop.monitor.performance import LabelledPrediction

Pair = tuple[LabelledPrediction, LabelledPrediction]
"""(champion, candidate) predictions on the same labelled image."""


class Verdict(StrEnum):
    BETTER = "better"
    NON_INFERIOR = "non_inferior"
    WORSE = "worse"
    NOT_ENOUGH_DATA = "not_enough_data"


class ScorecardPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_positive_pairs: int = Field(30, ge=1, description="Paired defective images needed.")
    margin: float = Field(0.02, ge=0, le=1, description="Non-inferiority margin on differences.")
    alpha: float = Field(0.05, gt=0, lt=1, description="One-sided level of 'better'.")
    confidence: float = Field(0.95, gt=0, lt=1, description="Interval confidence level.")
    bootstrap_resamples: int = Field(2000, ge=100, description="Resamples for precision.")
    recall_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Recall a candidate deciding significantly more images right may give up.",
    )


@dataclass(frozen=True)
class Difference:
    """Candidate minus champion, with its interval (None when undefined)."""

    champion: float | None
    candidate: float | None
    value: float | None
    ci_low: float | None
    ci_high: float | None


@dataclass(frozen=True)
class Scorecard:
    champion_version: str
    candidate_version: str
    n_pairs: int
    n_positive: int
    recall_counts: stats.PairedCounts
    """On defective images; first = champion, second = candidate, success = detected."""
    recall: Difference
    precision: Difference
    mcnemar_p: float
    """One-sided exact McNemar p that the candidate's recall is higher."""
    verdict: Verdict
    correct_counts: stats.PairedCounts
    """On every image; success = the model's decision matches the label."""
    correct_mcnemar_p: float
    """One-sided exact McNemar p that the candidate decides more images right."""


def _precision(
    truth: npt.NDArray[np.bool_], pred: npt.NDArray[np.bool_], axis: int = -1
) -> npt.NDArray[np.float64]:
    tp = np.sum(truth & pred, axis=axis)
    predicted = np.sum(pred, axis=axis)
    return np.where(predicted > 0, tp / np.where(predicted > 0, predicted, 1), np.nan)


def _precision_difference(
    truth: npt.NDArray[np.bool_],
    champion: npt.NDArray[np.bool_],
    candidate: npt.NDArray[np.bool_],
    policy: ScorecardPolicy,
) -> Difference:
    def diff(
        t: npt.NDArray[np.bool_],
        a: npt.NDArray[np.bool_],
        b: npt.NDArray[np.bool_],
        axis: int = -1,
    ) -> npt.NDArray[np.float64]:
        return _precision(t, b, axis) - _precision(t, a, axis)

    champ, cand = float(_precision(truth, champion)), float(_precision(truth, candidate))
    if np.isnan(champ) or np.isnan(cand):
        return Difference(
            champion=None if np.isnan(champ) else champ,
            candidate=None if np.isnan(cand) else cand,
            value=None,
            ci_low=None,
            ci_high=None,
        )
    low, high = stats.paired_bootstrap_interval(
        diff,
        (truth, champion, candidate),
        confidence=policy.confidence,
        n_resamples=policy.bootstrap_resamples,
    )
    return Difference(champ, cand, cand - champ, low, high)


def _verdict(
    n_positive: int,
    recall: Difference,
    precision: Difference,
    p: float,
    p_correct: float,
    policy: ScorecardPolicy,
) -> Verdict:
    diffs = (recall, precision)
    if n_positive < policy.min_positive_pairs or any(d.ci_low is None for d in diffs):
        return Verdict.NOT_ENOUGH_DATA
    lows = [d.ci_low for d in diffs if d.ci_low is not None]
    worse = any(
        d.ci_low is not None
        and d.ci_high is not None
        and d.ci_low < -policy.margin
        and d.ci_high < 0
        for d in diffs
    )
    if worse:
        return Verdict.WORSE
    recall_kept = recall.value is not None and recall.value >= -policy.recall_margin
    if p_correct < policy.alpha and recall_kept:
        return Verdict.BETTER
    if any(low < -policy.margin for low in lows):
        return Verdict.NOT_ENOUGH_DATA
    precision_better = precision.ci_low is not None and precision.ci_low > 0
    if p < policy.alpha or precision_better:
        return Verdict.BETTER
    return Verdict.NON_INFERIOR


def scorecard(pairs: Sequence[Pair], policy: ScorecardPolicy | None = None) -> Scorecard:
    """Compare the candidate (second of each pair) with the champion on the same labels.

    Every pair must be one image with one truth and the same two model versions; anything else is
    a caller bug and raises :class:`InvalidInputError`.
    """
    policy = policy or ScorecardPolicy()
    if not pairs:
        raise InvalidInputError("no paired predictions to score", hint="join on image_id first")
    champion_version, candidate_version = pairs[0][0].model_version, pairs[0][1].model_version
    for champ, cand in pairs:
        if champ.image_id != cand.image_id or champ.truth_defective != cand.truth_defective:
            raise InvalidInputError(f"pair {champ.image_id}/{cand.image_id} is not one image")
        if (champ.model_version, cand.model_version) != (champion_version, candidate_version):
            raise InvalidInputError("pairs mix model versions")
    truth = np.array([c.truth_defective for c, _ in pairs], dtype=bool)
    champion = np.array([c.predicted_defective for c, _ in pairs], dtype=bool)
    candidate = np.array([c.predicted_defective for _, c in pairs], dtype=bool)
    counts = stats.PairedCounts.from_outcomes(champion[truth], candidate[truth])
    n_positive = counts.n
    if n_positive:
        low, high = stats.paired_difference_interval(counts, policy.confidence)
        recall = Difference(
            champion=(counts.both + counts.first_only) / n_positive,
            candidate=(counts.both + counts.second_only) / n_positive,
            value=counts.difference,
            ci_low=low,
            ci_high=high,
        )
    else:
        recall = Difference(None, None, None, None, None)
    precision = _precision_difference(truth, champion, candidate, policy)
    p = stats.mcnemar_exact(counts.second_only, counts.first_only)
    correct = stats.PairedCounts.from_outcomes(champion == truth, candidate == truth)
    p_correct = stats.mcnemar_exact(correct.second_only, correct.first_only)
    return Scorecard(
        champion_version=champion_version,
        candidate_version=candidate_version,
        n_pairs=len(pairs),
        n_positive=n_positive,
        recall_counts=counts,
        recall=recall,
        precision=precision,
        mcnemar_p=p,
        verdict=_verdict(n_positive, recall, precision, p, p_correct, policy),
        correct_counts=correct,
        correct_mcnemar_p=p_correct,
    )
