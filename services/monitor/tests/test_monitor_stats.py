"""The monitor's statistics against independent implementations (statsmodels, scipy, a book)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import bootstrap as scipy_bootstrap
from statsmodels.stats.contingency_tables import mcnemar
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from defectloop.common.errors import InvalidInputError
from defectloop.monitor.stats import (
    PairedCounts,
    bernoulli_cusum,
    mcnemar_exact,
    paired_bootstrap_interval,
    paired_difference_interval,
    wilson_bounds,
    wilson_interval,
)

pytestmark = pytest.mark.unit

GRID = [(x, n) for n in (1, 2, 5, 20, 30, 57, 300) for x in sorted({0, 1, n // 3, n - 1, n})]


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_statsmodels(confidence: float) -> None:
    for x, n in GRID:
        low, high = proportion_confint(x, n, alpha=1 - confidence, method="wilson")
        assert wilson_interval(x, n, confidence) == pytest.approx((low, high), abs=1e-12)


def test_wilson_vectorised_equals_scalar() -> None:
    xs, ns = np.array([x for x, _ in GRID]), np.array([n for _, n in GRID])
    low, high = wilson_bounds(xs, ns)
    assert [(float(a), float(b)) for a, b in zip(low, high, strict=True)] == [
        wilson_interval(x, n) for x, n in GRID
    ]


def test_wilson_without_data_says_anything() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("x", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(x: int, n: int) -> None:
    with pytest.raises(InvalidInputError):
        wilson_interval(x, n)


def test_paired_interval_matches_fagerland_worked_example() -> None:
    # Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables", ch. 8 (Cavo et
    # al. 2012): table [[59, 6], [16, 80]], first - second = -0.0621 (95 % CI -0.1186 to -0.0046).
    counts = PairedCounts(both=59, first_only=6, second_only=16, neither=80)
    assert counts.difference == pytest.approx(0.0621, abs=5e-5)
    low, high = paired_difference_interval(counts)
    assert (low, high) == pytest.approx((0.0046, 0.1186), abs=5e-5)


def test_paired_interval_covers_the_true_difference() -> None:
    rng = np.random.default_rng(7)
    # cell probabilities (both, first only, second only, neither): correlated models, a real gap
    for cells, n in [
        ((0.8, 0.03, 0.1, 0.07), 60),
        ((0.5, 0.1, 0.1, 0.3), 40),
        ((0.85, 0, 0.05, 0.1), 100),
    ]:
        truth = cells[2] - cells[1]
        draws = rng.multinomial(n, cells, size=1500)
        covered = [
            low <= truth <= high
            for low, high in (paired_difference_interval(PairedCounts(*map(int, d))) for d in draws)
        ]
        assert np.mean(covered) >= 0.93


def test_paired_interval_is_narrower_than_unpaired_when_models_agree() -> None:
    counts = PairedCounts(both=80, first_only=2, second_only=8, neither=10)
    low, high = paired_difference_interval(counts)
    # Newcombe's unpaired interval for the same two proportions, from statsmodels
    ul, uh = confint_proportions_2indep(88, 100, 82, 100, method="newcomb")
    assert low < counts.difference < high
    assert high - low < 0.75 * (uh - ul)


def test_paired_counts_from_outcomes() -> None:
    counts = PairedCounts.from_outcomes([1, 1, 0, 0, 1], [1, 0, 1, 0, 1])
    assert counts == PairedCounts(both=2, first_only=1, second_only=1, neither=1)
    with pytest.raises(InvalidInputError):
        PairedCounts.from_outcomes([1, 0], [1])


def test_mcnemar_matches_scipy_and_statsmodels() -> None:
    for b in range(0, 25, 3):
        for c in range(0, 25, 4):
            if b + c == 0:
                continue
            p = mcnemar_exact(b, c)
            assert p == pytest.approx(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
            if b > c:  # the two-sided exact test doubles the smaller tail
                two_sided = mcnemar([[0, c], [b, 0]], exact=True).pvalue
                assert p == pytest.approx(two_sided / 2)


def test_mcnemar_without_discordance_is_one() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    with pytest.raises(InvalidInputError):
        mcnemar_exact(-1, 2)


def _cusum_by_recursion(x: list[int], p0: float, k: float) -> tuple[float, float, int]:
    """The textbook recursion, one observation at a time (river's loop)."""
    sigma = (p0 * (1 - p0)) ** 0.5
    s, peak, start = 0.0, 0.0, 0
    for i, xi in enumerate(x):
        s = max(0.0, s + (xi - p0) / sigma - k)
        if s == 0.0:
            start, peak = i + 1, 0.0
        peak = max(peak, s)
    return s, peak, start


def test_cusum_equals_the_recursion() -> None:
    rng = np.random.default_rng(3)
    for p0, rate in [(0.1, 0.1), (0.1, 0.3), (0.25, 0.2), (0.05, 0.5)]:
        x = (rng.random(400) < rate).astype(int).tolist()
        result = bernoulli_cusum(x, p0, threshold=1e9)
        s, peak, _ = _cusum_by_recursion(x, p0, 0.5)
        assert result.statistic == pytest.approx(s, abs=1e-9)
        assert result.excursion_peak == pytest.approx(peak, abs=1e-9)
        alarmed = bernoulli_cusum(x, p0, threshold=0.0, min_samples=1)
        if alarmed.alarm:
            assert alarmed.change_index == _cusum_by_recursion(x, p0, 0.5)[2]


def test_cusum_alarms_after_a_rise_and_dates_it() -> None:
    x = [0] * 40 + [1] * 6
    result = bernoulli_cusum(x, 0.1)
    assert result.alarm
    assert result.change_index == 40


def test_cusum_stays_quiet_at_the_reference_rate_run() -> None:
    x = ([1] + [0] * 9) * 20  # exactly the reference 10 % miss rate, evenly spread
    assert not bernoulli_cusum(x, 0.1).alarm


def test_cusum_needs_min_samples() -> None:
    assert not bernoulli_cusum([1] * 10, 0.1).alarm
    assert bernoulli_cusum([1] * 10, 0.1, min_samples=10).alarm


def test_cusum_reference_is_frozen_so_a_lasting_rise_stays_alarmed() -> None:
    rng = np.random.default_rng(5)
    x = (rng.random(1000) < 0.35).astype(int)
    assert bernoulli_cusum(x, 0.1).alarm


def test_cusum_survives_a_perfect_baseline() -> None:
    result = bernoulli_cusum([0] * 50 + [1] * 3, 0.0)
    assert result.reference_rate == pytest.approx(0.01)
    assert result.alarm


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.asarray(np.mean(b, axis=axis) - np.mean(a, axis=axis))


def test_paired_bootstrap_matches_scipy_percentile() -> None:
    rng = np.random.default_rng(11)
    a = rng.random(200) < 0.8
    b = a | (rng.random(200) < 0.1)
    ours = paired_bootstrap_interval(_mean_difference, (a, b), n_resamples=4000)
    ref = scipy_bootstrap(
        (a.astype(float), b.astype(float)),
        _mean_difference,
        paired=True,
        vectorized=True,
        n_resamples=4000,
        method="percentile",
        rng=np.random.default_rng(1),
    ).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.015)


def test_paired_bootstrap_is_deterministic_and_skips_undefined_resamples() -> None:
    truth = np.array([True] + [False] * 29)

    def share(t: np.ndarray, axis: int = -1) -> np.ndarray:
        n = np.sum(t, axis=axis)
        return np.where(n > 0, 1.0, np.nan)  # undefined when the resample has no positive

    first = paired_bootstrap_interval(share, (truth,), seed=4)
    assert first == paired_bootstrap_interval(share, (truth,), seed=4)
    assert first == (1.0, 1.0)


def test_paired_bootstrap_rejects_ragged_arrays() -> None:
    with pytest.raises(InvalidInputError):
        paired_bootstrap_interval(_mean_difference, (np.ones(3), np.ones(4)))
