"""The paired shadow/challenger scorecard: counts, intervals, McNemar and the verdict."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import bootstrap as scipy_bootstrap

from defectloop.common.errors import InvalidInputError
from defectloop.common.events import ModelRole
from defectloop.monitor.scorecard import Pair, Verdict, scorecard
from defectloop.monitor.stats import PairedCounts, paired_difference_interval

from .conftest import LABELLED

pytestmark = pytest.mark.unit

T0 = LABELLED.captured_at
CHAMPION = replace(LABELLED, image_id="", decision_score=0.0, labelled_at=T0)
CANDIDATE = replace(CHAMPION, model_version="v2", role=ModelRole.SHADOW)


def pairs(*groups: tuple[int, bool, bool, bool]) -> list[Pair]:
    """``(count, truth, champion says defective, candidate says defective)`` per group."""
    out: list[Pair] = []
    for count, truth, champ, cand in groups:
        for _ in range(count):
            image = f"img-{len(out)}"
            out.append(
                (
                    replace(
                        CHAMPION, image_id=image, truth_defective=truth, predicted_defective=champ
                    ),
                    replace(
                        CANDIDATE, image_id=image, truth_defective=truth, predicted_defective=cand
                    ),
                )
            )
    return out


def test_counts_interval_and_mcnemar_come_from_the_paired_table() -> None:
    card = scorecard(
        pairs(
            (40, True, True, True),
            (3, True, True, False),
            (12, True, False, True),
            (5, True, False, False),
            (40, False, False, False),
        )
    )
    assert card.recall_counts == PairedCounts(both=40, first_only=3, second_only=12, neither=5)
    assert (card.n_pairs, card.n_positive) == (100, 60)
    assert card.recall.champion == pytest.approx(43 / 60)
    assert card.recall.candidate == pytest.approx(52 / 60)
    assert card.recall.value == pytest.approx(9 / 60)
    assert (card.recall.ci_low, card.recall.ci_high) == paired_difference_interval(
        card.recall_counts
    )
    assert card.mcnemar_p == pytest.approx(binomtest(12, 15, 0.5, alternative="greater").pvalue)
    assert (card.champion_version, card.candidate_version) == ("v1", "v2")


def groups(spec: str) -> list[tuple[int, bool, bool, bool]]:
    """``"40:TTT 15:TFT"`` -> ``[(40, True, True, True), (15, True, False, True)]``: count, then
    truth, champion and candidate (T = defective, F = good), one letter each."""
    out = []
    for group in spec.split():
        count, flags = group.split(":")
        truth, champ, cand = (flag == "T" for flag in flags)
        out.append((int(count), truth, champ, cand))
    return out


SCENARIOS = {
    # name: (groups as ``count:<truth><champion><candidate>``, T = defective), verdict
    "finds_more_defects": ("40:TTT 15:TFT 5:TFF 40:FFF", Verdict.BETTER),
    "misses_more_defects": ("40:TTT 15:TTF 5:TFF 40:FFF", Verdict.WORSE),
    "identical_on_many_labels": ("270:TTT 30:TFF 180:FFF 20:FTT", Verdict.NON_INFERIOR),
    "fewer_false_alarms": ("270:TTT 30:TFF 170:FFF 30:FTF", Verdict.BETTER),
    # A precision incident repaired: the champion flags every part (recall 1.00 that no model can
    # beat), the candidate misses one defect in 40 and stops diverting 25 of 30 good parts.
    "stops_diverting_good_parts": ("39:TTT 1:TTF 25:FTF 5:FTT", Verdict.BETTER),
    # The same false alarms removed, paid for with 4 defects in 40 (recall drops 0.10, margin 0.05).
    "fewer_false_alarms_for_missed_defects": ("36:TTT 4:TTF 25:FTF 5:FTT", Verdict.NOT_ENOUGH_DATA),
    "too_few_defective_pairs": ("10:TFT 50:FFF", Verdict.NOT_ENOUGH_DATA),
    # 60 defective images, identical decisions: the paired interval (about ±0.04) still includes
    # a loss larger than the 0.02 margin
    "straddles_the_margin": ("54:TTT 6:TFF 40:FFF", Verdict.NOT_ENOUGH_DATA),
}


@pytest.mark.parametrize("name", SCENARIOS)
def test_verdict(name: str) -> None:
    spec, verdict = SCENARIOS[name]
    card = scorecard(pairs(*groups(spec)))
    assert card.verdict is verdict
    assert card.recall.ci_low is not None
    assert card.recall.ci_high is not None
    if verdict is Verdict.WORSE:
        assert card.recall.ci_high < 0
    if verdict is Verdict.NON_INFERIOR:
        assert card.recall.ci_low >= -0.02
        assert (card.precision.ci_low, card.precision.ci_high) == (0.0, 0.0)
    if name == "fewer_false_alarms":
        assert card.precision.ci_low is not None
        assert card.precision.ci_low > 0
    if name == "straddles_the_margin":
        assert card.recall.ci_low < -0.02
    if name.startswith(("stops_diverting", "fewer_false_alarms_for")):
        # recall alone could not decide it: its interval straddles the margin either way
        assert card.recall.ci_low < -0.02 < 0 < card.recall.ci_high
        right = card.correct_counts
        assert (right.second_only, right.first_only) == (25, int(name[0] == "f") * 3 + 1)
        assert card.correct_mcnemar_p < 0.05


def test_precision_difference_agrees_with_scipy_bootstrap() -> None:
    rng = np.random.default_rng(2)
    truth = rng.random(400) < 0.5
    champ = np.where(truth, rng.random(400) < 0.9, rng.random(400) < 0.15)
    cand = np.where(truth, champ | (rng.random(400) < 0.3), champ & (rng.random(400) < 0.6))
    groups = [(1, bool(t), bool(a), bool(b)) for t, a, b in zip(truth, champ, cand, strict=True)]
    card = scorecard(pairs(*groups))

    def diff(t: np.ndarray, a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.asarray(
            np.sum(t * b, axis=axis) / np.sum(b, axis=axis)
            - np.sum(t * a, axis=axis) / np.sum(a, axis=axis)
        )

    ref = scipy_bootstrap(
        (truth.astype(float), champ.astype(float), cand.astype(float)),
        diff,
        paired=True,
        vectorized=True,
        method="percentile",
        rng=np.random.default_rng(5),
    ).confidence_interval
    assert (card.precision.ci_low, card.precision.ci_high) == pytest.approx(
        (ref.low, ref.high), abs=0.01
    )


def test_a_model_that_never_says_defective_has_no_precision() -> None:
    card = scorecard(pairs((40, True, True, False), (40, False, False, False)))
    assert card.precision.candidate is None
    assert card.precision.value is None
    assert card.verdict is Verdict.NOT_ENOUGH_DATA


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [(replace(CHAMPION, image_id="a"), replace(CANDIDATE, image_id="b"))],
        [(replace(CHAMPION, image_id="a", truth_defective=True), replace(CANDIDATE, image_id="a"))],
        [
            (replace(CHAMPION, image_id="a"), replace(CANDIDATE, image_id="a")),
            (replace(CHAMPION, image_id="b"), replace(CANDIDATE, image_id="b", model_version="v3")),
        ],
    ],
)
def test_pairs_that_are_not_one_image_two_models_are_refused(bad: list[Pair]) -> None:
    with pytest.raises(InvalidInputError):
        scorecard(bad)
