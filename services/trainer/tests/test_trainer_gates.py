"""Promotion gates, checked against independent computations and statsmodels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from defectloop.common.errors import InvalidInputError
from defectloop.trainer.gates import (
    GateConfig,
    GateReport,
    Latency,
    SiteEval,
    evaluate_gates,
    improvement_gate,
    mcnemar_one_sided,
    non_inferiority_gate,
)

pytestmark = pytest.mark.unit

FAST = GateConfig(n_resamples=500)


def _site(
    name: str,
    *,
    n: int = 240,
    champ_recall: float = 0.9,
    cand_recall: float = 0.9,
    fp_rate: float = 0.03,
    cand_fp_rate: float | None = None,
    seed: int = 0,
    maps: tuple[float | None, float | None] = (None, None),
) -> SiteEval:
    """A frozen set where both models see the same images; misses drawn independently."""
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.4
    champ = np.where(truth, rng.random(n) < champ_recall, rng.random(n) < fp_rate)
    cand_fp = fp_rate if cand_fp_rate is None else cand_fp_rate
    cand = np.where(truth, rng.random(n) < cand_recall, rng.random(n) < cand_fp)
    return SiteEval(
        site=name,
        truth=truth.tolist(),
        champion=champ.tolist(),
        candidate=cand.tolist(),
        champion_map50=maps[0],
        candidate_map50=maps[1],
    )


def _same_models(name: str, seed: int = 1) -> SiteEval:
    ev = _site(name, seed=seed)
    return ev.model_copy(update={"candidate": list(ev.champion)})


@pytest.mark.parametrize(("b", "c"), [(9, 2), (5, 5), (0, 4), (17, 6), (1, 0)])
def test_one_sided_mcnemar_is_the_binomial_tail_and_halves_statsmodels_exact(
    b: int, c: int
) -> None:
    from statsmodels.stats.contingency_tables import mcnemar

    n = b + c
    tail = sum(math.comb(n, k) for k in range(b, n + 1)) / 2**n
    assert mcnemar_one_sided(b, c) == pytest.approx(tail, rel=1e-12)
    # statsmodels' exact test is two-sided: twice the smaller one-sided tail (capped at 1).
    two_sided = mcnemar([[10, c], [b, 10]], exact=True).pvalue
    smaller = min(mcnemar_one_sided(b, c), mcnemar_one_sided(c, b))
    assert two_sided == pytest.approx(min(1.0, 2 * smaller), rel=1e-12)


def test_no_discordant_image_is_no_evidence() -> None:
    assert mcnemar_one_sided(0, 0) == 1.0


def test_degraded_site_passes_when_the_candidate_finds_clearly_more_defects() -> None:
    ev = _site("B", champ_recall=0.5, cand_recall=0.95, maps=(0.55, 0.8))
    result = improvement_gate(ev, FAST)
    truth = np.array(ev.truth)
    cand, champ = np.array(ev.candidate)[truth], np.array(ev.champion)[truth]
    assert result.candidate_only_hits == int(np.sum(cand & ~champ))
    assert result.champion_only_hits == int(np.sum(champ & ~cand))
    assert result.candidate_recall == pytest.approx(cand.mean())
    assert result.p_value < 0.05
    assert result.passed, result.reasons


def test_degraded_site_fails_without_a_significant_gain() -> None:
    result = improvement_gate(_site("B", maps=(0.8, 0.8)), FAST)
    assert not result.passed
    assert "not better" in result.reasons[0]


def test_degraded_site_passes_when_the_candidate_stops_diverting_good_parts() -> None:
    """A precision incident: the champion flags nearly everything, so its recall cannot be beaten;
    the candidate is better because it decides the good parts right (counted independently)."""
    ev = _site("B", champ_recall=1.0, cand_recall=0.97, fp_rate=0.9, cand_fp_rate=0.05, seed=4)
    result = improvement_gate(ev.model_copy(update={"champion_map50": 0.03}), FAST)
    assert result.passed is False  # the candidate's mAP50 is missing: both are needed
    ev = ev.model_copy(update={"champion_map50": 0.03, "candidate_map50": 0.7})
    result = improvement_gate(ev, FAST)
    truth, champ, cand = (np.array(x) for x in (ev.truth, ev.champion, ev.candidate))
    assert result.candidate_only_correct == int(np.sum((cand == truth) & (champ != truth)))
    assert result.champion_only_correct == int(np.sum((champ == truth) & (cand != truth)))
    assert result.candidate_precision is not None
    assert result.champion_precision is not None
    assert result.candidate_precision > result.champion_precision
    assert result.p_value < 0.05
    assert result.passed, result.reasons


def test_degraded_site_fails_when_more_right_decisions_cost_recall() -> None:
    """Fewer false alarms bought with missed defects is not a repair."""
    ev = _site(
        "B", champ_recall=0.97, cand_recall=0.6, fp_rate=0.6, cand_fp_rate=0.0, maps=(0.5, 0.5)
    )
    result = improvement_gate(ev, FAST)
    assert result.p_value < 0.05  # more images decided right overall ...
    assert result.recall_worse_p is not None
    assert result.recall_worse_p < 0.05
    assert not result.passed  # ... but the defects it misses fail it
    assert any("recall significantly lower" in r for r in result.reasons)


def test_degraded_site_fails_a_recall_drop_beyond_the_margin_even_when_not_significant() -> None:
    truth = [True] * 10 + [False] * 30
    champ = [True] * 10 + [True] * 30
    cand = [True] * 8 + [False] * 2 + [False] * 30  # 2 misses of 10: p = 0.25, drop 0.2
    ev = SiteEval(
        site="B",
        truth=truth,
        champion=champ,
        candidate=cand,
        champion_map50=0.1,
        candidate_map50=0.8,
    )
    result = improvement_gate(ev, FAST)
    assert result.recall_worse_p == pytest.approx(0.25)
    assert [r for r in result.reasons if "recall" in r] == [
        "site B: recall 0.800 is more than 0.1 below the champion's 1.000"
    ]


def test_degraded_site_fails_when_map50_drops_beyond_the_margin() -> None:
    ev = _site("B", champ_recall=0.5, cand_recall=0.95, maps=(0.80, 0.77))
    result = improvement_gate(ev, FAST)
    assert result.p_value < 0.05
    assert not result.passed
    assert ["mAP50" in r for r in result.reasons] == [True]


def test_identical_models_are_non_inferior_everywhere() -> None:
    rows = non_inferiority_gate([_same_models("A"), _same_models("C", seed=2)], FAST)
    assert [r.passed for r in rows] == [True, True]
    assert all(r.delta_recall == 0 and r.recall_lower == 0 for r in rows)


def test_a_site_that_loses_recall_is_not_non_inferior() -> None:
    worse = _site("C", champ_recall=0.95, cand_recall=0.7, seed=3)
    [row] = non_inferiority_gate([worse], FAST)
    truth = np.array(worse.truth)
    expected = np.array(worse.candidate)[truth].mean() - np.array(worse.champion)[truth].mean()
    assert row.delta_recall == pytest.approx(expected)
    assert row.recall_lower < -FAST.noninferiority_margin
    assert not row.passed


def test_holm_adjustment_matches_the_step_down_formula() -> None:
    evals = [_same_models("A"), _site("C", cand_recall=0.86, seed=5), _same_models("D", seed=6)]
    rows = non_inferiority_gate(evals, FAST)
    p = np.array([r.p_site for r in rows])
    order = np.argsort(p, kind="stable")
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    assert [r.p_holm for r in rows] == pytest.approx(adjusted.tolist())
    assert [r.passed for r in rows] == [bool(a < FAST.alpha) for a in adjusted]
    assert all(r.p_site == max(r.p_recall, r.p_precision) for r in rows)


def test_the_report_is_reproducible_from_its_seed() -> None:
    evals = [_site("C", cand_recall=0.88, seed=7)]
    assert non_inferiority_gate(evals, FAST) == non_inferiority_gate(evals, FAST)


def _report(**kw: Any) -> GateReport:
    args: dict[str, Any] = {
        "candidate_version": "cand",
        "champion_version": "champ",
        "degraded": _site("B", champ_recall=0.5, cand_recall=0.95, maps=(0.6, 0.8)),
        "others": [_same_models("A")],
        "parity": {"heatmap": 1e-6, "size": 2e-6},
        "latency": Latency(champion_ms=10.0, candidate_ms=10.5),
        "config": FAST,
    }
    args.update(kw)
    return evaluate_gates(**args)


def test_all_gates_pass_for_a_good_candidate() -> None:
    report = _report()
    assert report.reasons == []
    assert report.passed


def test_parity_failure_fails_the_report_with_its_number() -> None:
    report = _report(parity={"heatmap": 0.2})
    assert not report.passed
    assert report.reasons == ["ONNX/torch parity: heatmap differs by 2.00e-01 > 1e-03"]


def test_slower_candidate_beyond_the_margin_fails() -> None:
    report = _report(latency=Latency(champion_ms=10.0, candidate_ms=11.5))
    assert not report.passed
    assert ["latency" in r for r in report.reasons] == [True]


def test_every_failure_is_named() -> None:
    report = _report(others=[_site("C", champ_recall=0.95, cand_recall=0.6, seed=3)], parity={})
    reasons = report.reasons
    assert any(r.startswith("site C: not shown non-inferior") for r in reasons)
    assert "ONNX/torch parity was not measured" in reasons


def test_a_site_with_its_own_model_is_scored_but_does_not_decide() -> None:
    worse = _site("C", champ_recall=0.95, cand_recall=0.6, seed=3)
    own_model = worse.model_copy(update={"binding": False})
    report = _report(others=[_same_models("A"), own_model])
    assert report.passed, report.reasons
    row = next(r for r in report.non_inferiority if r.site == "C")
    assert not row.binding  # kept in the evidence, with its numbers
    assert not row.passed
    assert row.delta_recall < -0.2
    # It takes no share of the correction: the binding set is tested as if alone.
    binding_only = non_inferiority_gate([_same_models("A")], FAST)
    assert report.non_inferiority[0] == binding_only[0]
    # The same set, binding (a site the champion's version serves), fails the report.
    assert not _report(others=[_same_models("A"), worse]).passed


def test_a_set_named_twice_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="named once"):
        _report(others=[_same_models("B")])


def test_unpaired_evaluations_are_refused() -> None:
    with pytest.raises(ValidationError, match="same length"):
        SiteEval(site="A", truth=[True, False], champion=[True], candidate=[True, False])
