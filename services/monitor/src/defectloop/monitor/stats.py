"""The monitor's statistics: intervals for proportions, paired tests, a sequential detector.

Pure functions over counts or 0/1 arrays; every one is checked in the tests against an independent
implementation (statsmodels, scipy, a published worked example).

* :func:`wilson_interval` — the Wilson score interval. Not Wald: Brown, Cai & DasGupta (2001) call
  Wald coverage "chaotic" and recommend Wilson for small n (notes §3.1), and statsmodels defaults to
  Wald, so the method is fixed here rather than left to a default.
* :func:`paired_difference_interval` — Newcombe's square-and-add interval (his method 10) for the
  difference of two proportions measured on the same items: built from the two Wilson intervals and
  their correlation, so it shrinks when two models agree on most images (the paired design of the
  shadow scorecard and of the trainer's gate, notes R10/R11).
* :func:`mcnemar_exact` — one-sided exact McNemar p-value ("the second model is better"), the
  paired test the notes (R10) prefer to Geti's unpaired z-test.
* :func:`bernoulli_cusum` — a one-sided CUSUM on 0/1 error indicators (river's ``CUSUM``
  semantics, notes §3.2: in units of the reference σ, slack 0.5, threshold 5, at least 30
  observations) with the reference rate **frozen** from the model's baseline, because "a running
  mean would chase the very shift being detected". It budgets the repeated looks that a fixed-window
  test cannot: see ``performance.py`` for how it combines with the Wilson rule.
* :func:`paired_bootstrap_interval` — a percentile bootstrap over items for statistics that are not
  a single proportion (F1, a difference of precisions whose denominators differ between models);
  seeded, so the same data always gives the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import numpy.typing as npt
from scipy import stats as sps

from defectloop.common.errors import InvalidInputError

FloatArray = npt.NDArray[np.float64]

CUSUM_SLACK = 0.5
"""Allowance per observation, in reference σ (river's default: tuned to a 1σ shift)."""
CUSUM_THRESHOLD = 5.0
"""Decision interval h, in reference σ (river's default). Siegmund's ARL₀ ≈ 938 holds for Gaussian
data only: on 0/1 errors at a 10 % reference rate it alarms about every 210 observations (measured
with ``performance.simulate_rule``), which is why the monitor never acts on the CUSUM alone."""
CUSUM_MIN_SAMPLES = 30
"""No alarm before this many observations (river's ``min_instances``)."""
REFERENCE_RATE_FLOOR = 0.01
"""A baseline recall of 1.0 on a finite held-out set means "fewer misses than we could see", not a
zero miss rate: the frozen reference rate is kept in [0.01, 0.99] so σ is never zero."""


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise InvalidInputError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2.0)


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or successes < 0 or successes > n:
        raise InvalidInputError(f"need 0 <= successes <= n, got successes={successes}, n={n}")


def wilson_bounds(
    successes: npt.ArrayLike, n: npt.ArrayLike, confidence: float = 0.95
) -> tuple[FloatArray, FloatArray]:
    """Vectorised :func:`wilson_interval`; ``n == 0`` gives the uninformative ``(0, 1)``."""
    z = _z(confidence)
    x = np.asarray(successes, dtype=np.float64)
    m = np.asarray(n, dtype=np.float64)
    safe = np.where(m > 0, m, 1.0)
    p = x / safe
    denom = 1.0 + z * z / safe
    centre = (p + z * z / (2.0 * safe)) / denom
    half = z * np.sqrt(p * (1.0 - p) / safe + z * z / (4.0 * safe * safe)) / denom
    low = np.where(m > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    high = np.where(m > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return low, high


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion; ``(0.0, 1.0)`` when ``n == 0``."""
    _check_counts(successes, n)
    low, high = wilson_bounds(successes, n, confidence)
    return float(low), float(high)


@dataclass(frozen=True)
class PairedCounts:
    """Two binary outcomes (success = the model is right) on the same items."""

    both: int
    first_only: int
    second_only: int
    neither: int

    @property
    def n(self) -> int:
        return self.both + self.first_only + self.second_only + self.neither

    @property
    def difference(self) -> float:
        """Second proportion minus first, ``(second_only - first_only) / n`` (0 when empty)."""
        return (self.second_only - self.first_only) / self.n if self.n else 0.0

    @classmethod
    def from_outcomes(cls, first: npt.ArrayLike, second: npt.ArrayLike) -> PairedCounts:
        a = np.asarray(first, dtype=bool).reshape(-1)
        b = np.asarray(second, dtype=bool).reshape(-1)
        if a.shape != b.shape:
            raise InvalidInputError(f"{a.size} first outcomes for {b.size} second outcomes")
        return cls(
            both=int(np.sum(a & b)),
            first_only=int(np.sum(a & ~b)),
            second_only=int(np.sum(~a & b)),
            neither=int(np.sum(~a & ~b)),
        )


def paired_difference_interval(
    counts: PairedCounts, confidence: float = 0.95
) -> tuple[float, float]:
    """Newcombe's (1998) square-and-add interval for ``p_second - p_first`` on paired items.

    The correlation term uses Newcombe's corrected phi (numerator ``ad - bc`` reduced by ``n/2``
    when positive, zero in between), as in Fagerland, Lydersen & Laake's reference code. Empty
    tables give ``(-1, 1)``.
    """
    for value in (counts.both, counts.first_only, counts.second_only, counts.neither):
        if value < 0:
            raise InvalidInputError(f"paired counts must be >= 0, got {counts}")
    n = counts.n
    if n == 0:
        return -1.0, 1.0
    first_hits = counts.both + counts.first_only
    second_hits = counts.both + counts.second_only
    p1, p2 = first_hits / n, second_hits / n
    l1, u1 = wilson_interval(first_hits, n, confidence)
    l2, u2 = wilson_interval(second_hits, n, confidence)
    margins = first_hits * (n - first_hits) * second_hits * (n - second_hits)
    phi = 0.0
    if margins > 0:
        a = counts.both * counts.neither - counts.first_only * counts.second_only
        if a > n / 2:
            phi = (a - n / 2) / math.sqrt(margins)
        elif a < 0:
            phi = a / math.sqrt(margins)
    delta = p2 - p1
    low_sq = (p2 - l2) ** 2 + (u1 - p1) ** 2 - 2 * phi * (p2 - l2) * (u1 - p1)
    high_sq = (u2 - p2) ** 2 + (p1 - l1) ** 2 - 2 * phi * (u2 - p2) * (p1 - l1)
    low = delta - math.sqrt(max(low_sq, 0.0))
    high = delta + math.sqrt(max(high_sq, 0.0))
    return max(-1.0, low), min(1.0, high)


def mcnemar_exact(b: int, c: int) -> float:
    """One-sided exact McNemar p-value that the second model is better.

    ``b``: items the second (candidate) model gets right and the first (champion) gets wrong;
    ``c``: the reverse. Under "no difference" each discordant item is a fair coin, so the p-value is
    ``P(X >= b)`` for ``X ~ Binomial(b + c, 1/2)``; no discordant items gives 1.
    """
    if b < 0 or c < 0:
        raise InvalidInputError(f"discordant counts must be >= 0, got b={b}, c={c}")
    if b + c == 0:
        return 1.0
    return float(sps.binom.sf(b - 1, b + c, 0.5))


@dataclass(frozen=True)
class CusumResult:
    """The state of a one-sided CUSUM after a sequence of 0/1 observations.

    ``alarm``: the current excursion (since the statistic last sat at 0) has exceeded the
    threshold and at least ``min_samples`` observations were seen. ``change_index``: where that
    excursion began, the usual CUSUM estimate of the change point (``None`` without an alarm).
    """

    statistic: float
    excursion_peak: float
    alarm: bool
    change_index: int | None
    n: int
    reference_rate: float


def bernoulli_cusum(
    errors: npt.ArrayLike,
    reference_rate: float,
    *,
    slack: float = CUSUM_SLACK,
    threshold: float = CUSUM_THRESHOLD,
    min_samples: int = CUSUM_MIN_SAMPLES,
) -> CusumResult:
    """One-sided upper CUSUM of error indicators against a frozen reference error rate.

    ``S_t = max(0, S_{t-1} + (x_t - p0) / σ0 - slack)`` with ``σ0 = sqrt(p0 (1 - p0))``: it rises
    only when errors (misses, for recall) come faster than the baseline says they should.
    """
    x = np.asarray(errors, dtype=np.float64).reshape(-1)
    p0 = min(max(reference_rate, REFERENCE_RATE_FLOOR), 1.0 - REFERENCE_RATE_FLOOR)
    sigma = math.sqrt(p0 * (1.0 - p0))
    # The recursion max(0, S + inc) equals the cumulative sum minus its running minimum (with
    # S_0 = 0), which numpy computes without a Python loop over every label.
    cumulative = np.concatenate(([0.0], np.cumsum((x - p0) / sigma - slack)))
    path = cumulative - np.minimum.accumulate(cumulative)
    zeros = np.flatnonzero(path <= 0.0)
    start = int(zeros[-1])  # index into ``path``; the excursion's first observation is x[start]
    s = float(path[-1])
    peak = float(path[start:].max())
    alarm = peak > threshold and x.size >= min_samples
    return CusumResult(
        statistic=s,
        excursion_peak=peak,
        alarm=alarm,
        change_index=start if alarm else None,
        n=int(x.size),
        reference_rate=p0,
    )


def paired_bootstrap_interval(
    statistic: Callable[..., FloatArray],
    data: tuple[npt.ArrayLike, ...],
    *,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over items (the arrays resampled together).

    ``statistic(*arrays, axis=-1)`` must be vectorised along the last axis (scipy's convention).
    A resample on which the statistic is undefined (NaN, e.g. a precision with no predicted
    positive) is left out of the percentiles instead of poisoning them, which is why this is not
    ``scipy.stats.bootstrap``; with no defined resample the interval is ``(nan, nan)``.
    """
    _z(confidence)
    arrays = [np.asarray(a).reshape(-1) for a in data]
    if not arrays or arrays[0].size == 0:
        return math.nan, math.nan
    if len({a.size for a in arrays}) != 1:
        raise InvalidInputError("bootstrap arrays must have the same length")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arrays[0].size, size=(n_resamples, arrays[0].size))
    values = np.asarray(statistic(*(a[idx] for a in arrays), axis=-1), dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = 50.0 * (1.0 - confidence)
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)
