"""Promotion gates: candidate vs champion on the SAME frozen images of each site (closed-loop R10).

Pure functions over per-image decisions, no torch and no I/O, so the trainer service, the CLI and
tests all compute the same :class:`GateReport`:

* the degraded site must get better: more of its images decided right, by a one-sided exact
  McNemar on the discordant images, defective and good alike (an incident can be on recall, a model
  missing defects, or on precision, a model diverting good parts, and the same test sees a repair of
  either); without paying for it in recall (not significantly lower on the defective images, and not
  lower by more than a margin) nor in mAP50 (not lower by more than a margin);
* every set the promotion can hurt must be non-inferior: the paired-bootstrap lower bound of
  Δrecall and Δprecision ≥ −margin, with Holm's correction across those sets, seeded so the report
  is reproducible. Those sets ("binding") are the degraded site's pre-drift set and every other
  site whose traffic the champion's version serves (a model shared by several sites). A site
  served by a model of its own is scored all the same and its row kept in the evidence (how the
  candidate does away from home), but it does not decide: the promotion does not change what
  that site runs, and a site's champion is no yardstick on another site's parts (site B's
  bootstrap model flags 38 % of site A's good parts: recall 1.00, precision 0.62 on 150 A images,
  so no candidate that learns B's parts can be non-inferior to it in recall there);
* ONNX/torch parity within tolerance; latency not worse than the champion's by more than a margin.

The report carries every count, p-value and bound; it is the evidence stored on the version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from defectloop.common.errors import InvalidInputError

BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GateConfig(_Frozen):
    """Margins and test levels (defaults from the closed-loop note, R10)."""

    alpha: float = Field(0.05, gt=0, lt=1, description="Level of every test.")
    map50_margin: float = Field(0.02, ge=0, description="Degraded site: mAP50 may drop this much.")
    recall_margin: float = Field(
        0.10,
        ge=0,
        le=1,
        description="Degraded site: recall may drop this much (point estimate on the frozen set) "
        "while more images are decided right; a significant drop fails whatever the margin.",
    )
    noninferiority_margin: float = Field(
        0.02, ge=0, description="Other sites: Δrecall and Δprecision lower bounds ≥ −margin."
    )
    n_resamples: int = Field(2000, ge=100, description="Paired bootstrap resamples.")
    seed: int = Field(0, description="Bootstrap seed: the same inputs give the same report.")
    parity_tolerance: float = Field(1e-3, gt=0, description="Max |ONNX − torch| per output.")
    latency_margin: float = Field(
        0.10, ge=0, description="Candidate latency ≤ champion × (1 + margin)."
    )


class SiteEval(_Frozen):
    """Both models' image-level decisions on one frozen evaluation set (same images, same order)."""

    site: str = Field(description="Site id, or a named set such as 'B/pre-drift'.")
    truth: list[bool] = Field(description="Image is defective (ground truth).")
    champion: list[bool] = Field(description="Champion flags the image as defective.")
    candidate: list[bool] = Field(description="Candidate flags the image as defective.")
    champion_map50: float | None = Field(None, ge=0, le=1)
    candidate_map50: float | None = Field(None, ge=0, le=1)
    binding: bool = Field(
        True,
        description="Non-inferiority decides (a set the promotion can hurt); False: scored for "
        "the record only (a site served by a model of its own).",
    )

    @model_validator(mode="after")
    def _paired(self) -> SiteEval:
        n = len(self.truth)
        if n == 0 or len(self.champion) != n or len(self.candidate) != n:
            raise ValueError(
                f"site {self.site}: truth, champion and candidate must be non-empty and of the "
                f"same length (paired on the same images), got {n}, {len(self.champion)}, "
                f"{len(self.candidate)}"
            )
        return self


class Latency(_Frozen):
    """Per-image latency of both models, measured the same way on the same machine."""

    champion_ms: float = Field(gt=0)
    candidate_ms: float = Field(gt=0)


class ImprovementResult(_Frozen):
    site: str
    n_images: int
    n_defective: int
    champion_recall: float
    candidate_recall: float
    candidate_only_hits: int = Field(description="Defective images only the candidate finds.")
    champion_only_hits: int = Field(description="Defective images only the champion finds.")
    p_value: float = Field(
        description="One-sided exact McNemar that the candidate decides more images right "
        "(binomial on the discordant images)."
    )
    champion_map50: float | None
    candidate_map50: float | None
    passed: bool
    reasons: list[str]
    # Defaults keep gate reports stored before these fields readable.
    champion_precision: float | None = None
    candidate_precision: float | None = None
    candidate_only_correct: int | None = Field(
        None, description="Images (defective or good) only the candidate decides right."
    )
    champion_only_correct: int | None = Field(
        None, description="Images (defective or good) only the champion decides right."
    )
    recall_worse_p: float | None = Field(
        None, description="One-sided exact McNemar that the champion finds more defects."
    )


class NonInferiorityResult(_Frozen):
    site: str
    n_images: int
    n_defective: int
    delta_recall: float = Field(description="Candidate − champion on the full set.")
    delta_precision: float
    recall_lower: float = Field(description="One-sided (1 − alpha) bootstrap lower bound.")
    precision_lower: float
    p_recall: float = Field(description="Bootstrap p of H0: Δrecall ≤ −margin.")
    p_precision: float
    p_site: float = Field(description="max(p_recall, p_precision): both must hold.")
    p_holm: float = Field(description="Holm-adjusted p across the sites.")
    holm_level: float = Field(description="The level Holm assigns this site (alpha / rank).")
    recall_lower_holm: float = Field(description="Lower bound at the Holm level.")
    precision_lower_holm: float
    passed: bool
    binding: bool = Field(
        True, description="Decides the gate; False: a site with its own model, for the record."
    )


class ParityResult(_Frozen):
    max_abs_diff: dict[str, float]
    tolerance: float
    passed: bool


class LatencyResult(_Frozen):
    champion_ms: float
    candidate_ms: float
    margin: float
    passed: bool


class GateReport(_Frozen):
    """Every number of the gate decision, stored on the version and in its audit record."""

    candidate_version: str
    champion_version: str
    degraded_site: str
    config: GateConfig
    improvement: ImprovementResult
    non_inferiority: list[NonInferiorityResult]
    parity: ParityResult
    latency: LatencyResult
    passed: bool
    reasons: list[str] = Field(description="Why it failed; empty when it passed.")


def _arrays(ev: SiteEval) -> tuple[BoolArray, BoolArray, BoolArray]:
    return (
        np.asarray(ev.truth, dtype=bool),
        np.asarray(ev.champion, dtype=bool),
        np.asarray(ev.candidate, dtype=bool),
    )


def _ratio(num: FloatArray, den: FloatArray, empty: float) -> FloatArray:
    out = np.full(np.broadcast(num, den).shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def recall(truth: FloatArray, pred: FloatArray) -> FloatArray:
    """Image-level recall along the last axis; 0 defective images counts as recall 1 (no miss)."""
    return _ratio((truth * pred).sum(axis=-1), truth.sum(axis=-1), 1.0)


def precision(truth: FloatArray, pred: FloatArray) -> FloatArray:
    """Image-level precision; no image flagged counts as precision 1 (no false alarm)."""
    return _ratio((truth * pred).sum(axis=-1), pred.sum(axis=-1), 1.0)


def mcnemar_one_sided(candidate_only: int, champion_only: int) -> float:
    """P(X ≥ candidate_only) for X ~ Bin(discordant, 1/2): exact McNemar, H1 = candidate better."""
    from scipy.stats import binomtest

    n = candidate_only + champion_only
    if n == 0:
        return 1.0
    return float(binomtest(candidate_only, n, 0.5, alternative="greater").pvalue)


def improvement_gate(ev: SiteEval, config: GateConfig) -> ImprovementResult:
    """The degraded site: more images decided right, recall and mAP50 not paid for it."""
    truth, champ, cand = _arrays(ev)
    champ_right, cand_right = champ == truth, cand == truth
    b = int(np.sum(cand_right & ~champ_right))
    c = int(np.sum(champ_right & ~cand_right))
    p = mcnemar_one_sided(b, c)
    cand_hits, champ_hits = cand[truth], champ[truth]
    hits_b = int(np.sum(cand_hits & ~champ_hits))
    hits_c = int(np.sum(champ_hits & ~cand_hits))
    p_recall_worse = mcnemar_one_sided(hits_c, hits_b)
    t = truth.astype(np.float64)
    champ_recall = float(recall(t, champ.astype(np.float64)))
    cand_recall = float(recall(t, cand.astype(np.float64)))
    n_def = int(truth.sum())
    reasons: list[str] = []
    if n_def == 0:
        reasons.append(f"site {ev.site}: no defective image in the frozen set")
    if p >= config.alpha:
        reasons.append(
            f"site {ev.site}: not better (McNemar p={p:.3g} ≥ {config.alpha}: {b} images only "
            f"the candidate decides right vs {c} only the champion, of {truth.size})"
        )
    if n_def and p_recall_worse < config.alpha:
        reasons.append(
            f"site {ev.site}: recall significantly lower (McNemar p={p_recall_worse:.3g}: the "
            f"champion finds {hits_c} defective images the candidate misses, the candidate {hits_b})"
        )
    elif n_def and cand_recall < champ_recall - config.recall_margin:
        reasons.append(
            f"site {ev.site}: recall {cand_recall:.3f} is more than {config.recall_margin} below "
            f"the champion's {champ_recall:.3f}"
        )
    if ev.champion_map50 is None or ev.candidate_map50 is None:
        reasons.append(f"site {ev.site}: mAP50 of both models is needed")
    elif ev.candidate_map50 < ev.champion_map50 - config.map50_margin:
        reasons.append(
            f"site {ev.site}: mAP50 {ev.candidate_map50:.3f} is more than {config.map50_margin} "
            f"below the champion's {ev.champion_map50:.3f}"
        )
    return ImprovementResult(
        site=ev.site,
        n_images=int(truth.size),
        n_defective=n_def,
        champion_recall=champ_recall,
        candidate_recall=cand_recall,
        candidate_only_hits=hits_b,
        champion_only_hits=hits_c,
        p_value=p,
        champion_map50=ev.champion_map50,
        candidate_map50=ev.candidate_map50,
        passed=not reasons,
        reasons=reasons,
        champion_precision=float(precision(t, champ.astype(np.float64))),
        candidate_precision=float(precision(t, cand.astype(np.float64))),
        candidate_only_correct=b,
        champion_only_correct=c,
        recall_worse_p=p_recall_worse,
    )


def _bootstrap_deltas(ev: SiteEval, config: GateConfig) -> tuple[FloatArray, FloatArray]:
    """Paired bootstrap distributions of Δrecall and Δprecision (the same resamples for both)."""
    from scipy.stats import bootstrap

    data = tuple(a.astype(np.float64) for a in _arrays(ev))

    def d_recall(t: FloatArray, a: FloatArray, b: FloatArray, axis: int = -1) -> FloatArray:
        return recall(t, b) - recall(t, a)

    def d_precision(t: FloatArray, a: FloatArray, b: FloatArray, axis: int = -1) -> FloatArray:
        return precision(t, b) - precision(t, a)

    dists = []
    for stat in (d_recall, d_precision):
        res = bootstrap(
            data,
            stat,
            n_resamples=config.n_resamples,
            paired=True,
            vectorized=True,
            axis=-1,
            method="percentile",
            alternative="greater",
            confidence_level=1 - config.alpha,
            rng=np.random.default_rng(config.seed),  # same seed: same resampled images
        )
        dists.append(np.asarray(res.bootstrap_distribution, dtype=np.float64))
    return dists[0], dists[1]


def _p_below(dist: FloatArray, margin: float) -> float:
    """Bootstrap p of H0 Δ ≤ −margin (with the +1 that keeps it away from an impossible 0)."""
    return float((np.sum(dist <= -margin) + 1) / (dist.size + 1))


def non_inferiority_gate(
    evals: Sequence[SiteEval], config: GateConfig
) -> list[NonInferiorityResult]:
    """Every set non-inferior on recall and precision, Holm-corrected across the binding sets
    (a non-binding set is tested alone, at ``alpha``: its row is for the record)."""
    if not evals:
        return []
    from statsmodels.stats.multitest import multipletests

    rows = []
    for ev in evals:
        truth, champ, cand = (a.astype(np.float64) for a in _arrays(ev))
        d_r, d_p = _bootstrap_deltas(ev, config)
        p_r = _p_below(d_r, config.noninferiority_margin)
        p_p = _p_below(d_p, config.noninferiority_margin)
        rows.append((ev, truth, champ, cand, d_r, d_p, p_r, p_p, max(p_r, p_p)))
    binding = [i for i, r in enumerate(rows) if r[0].binding]
    p_holm = np.array([r[-1] for r in rows])
    reject = p_holm < config.alpha
    levels = np.full(len(rows), config.alpha)
    if binding:
        p_bind = p_holm[binding]
        rej, adj, _, _ = multipletests(p_bind, alpha=config.alpha, method="holm")
        rank = np.empty(len(binding), dtype=int)
        rank[np.argsort(p_bind, kind="stable")] = np.arange(len(binding))
        for j, i in enumerate(binding):
            reject[i], p_holm[i] = rej[j], adj[j]
            levels[i] = config.alpha / (len(binding) - rank[j])
    results = []
    for i, (ev, truth, champ, cand, d_r, d_p, p_r, p_p, p_site) in enumerate(rows):
        level = float(levels[i])
        results.append(
            NonInferiorityResult(
                site=ev.site,
                n_images=int(truth.size),
                n_defective=int(truth.sum()),
                delta_recall=float(recall(truth, cand) - recall(truth, champ)),
                delta_precision=float(precision(truth, cand) - precision(truth, champ)),
                recall_lower=float(np.quantile(d_r, config.alpha)),
                precision_lower=float(np.quantile(d_p, config.alpha)),
                p_recall=p_r,
                p_precision=p_p,
                p_site=p_site,
                p_holm=float(p_holm[i]),
                holm_level=float(level),
                recall_lower_holm=float(np.quantile(d_r, level)),
                precision_lower_holm=float(np.quantile(d_p, level)),
                passed=bool(reject[i]),
                binding=ev.binding,
            )
        )
    return results


def parity_gate(max_abs_diff: Mapping[str, float], config: GateConfig) -> ParityResult:
    diffs = {k: float(v) for k, v in max_abs_diff.items()}
    passed = bool(diffs) and all(v <= config.parity_tolerance for v in diffs.values())
    return ParityResult(max_abs_diff=diffs, tolerance=config.parity_tolerance, passed=passed)


def latency_gate(latency: Latency, config: GateConfig) -> LatencyResult:
    passed = latency.candidate_ms <= latency.champion_ms * (1 + config.latency_margin)
    return LatencyResult(
        champion_ms=latency.champion_ms,
        candidate_ms=latency.candidate_ms,
        margin=config.latency_margin,
        passed=passed,
    )


def evaluate_gates(
    *,
    candidate_version: str,
    champion_version: str,
    degraded: SiteEval,
    others: Sequence[SiteEval],
    parity: Mapping[str, float],
    latency: Latency,
    config: GateConfig | None = None,
) -> GateReport:
    """All gates; ``passed`` only when every one passes, ``reasons`` names each failure."""
    config = config or GateConfig()
    names = [degraded.site, *(ev.site for ev in others)]
    if len(set(names)) != len(names):
        raise InvalidInputError(
            f"each evaluation set must be named once, got {names}",
            hint="name a site's pre-drift set apart, e.g. 'B/pre-drift'",
        )
    improvement = improvement_gate(degraded, config)
    non_inf = non_inferiority_gate(others, config)
    par = parity_gate(parity, config)
    lat = latency_gate(latency, config)
    reasons = list(improvement.reasons)
    m = config.noninferiority_margin
    for row in non_inf:
        if row.binding and not row.passed:
            reasons.append(
                f"site {row.site}: not shown non-inferior (Δrecall lower {row.recall_lower_holm:+.3f}, "
                f"Δprecision lower {row.precision_lower_holm:+.3f} at Holm level "
                f"{row.holm_level:.3g}; margin −{m})"
            )
    if not par.max_abs_diff:
        reasons.append("ONNX/torch parity was not measured")
    elif not par.passed:
        worst = max(par.max_abs_diff.items(), key=lambda kv: kv[1])
        reasons.append(
            f"ONNX/torch parity: {worst[0]} differs by {worst[1]:.2e} > {par.tolerance:.0e}"
        )
    if not lat.passed:
        reasons.append(
            f"latency {lat.candidate_ms:.2f} ms is more than {lat.margin:.0%} above the "
            f"champion's {lat.champion_ms:.2f} ms"
        )
    return GateReport(
        candidate_version=candidate_version,
        champion_version=champion_version,
        degraded_site=degraded.site,
        config=config,
        improvement=improvement,
        non_inferiority=non_inf,
        parity=par,
        latency=lat,
        passed=not reasons,
        reasons=reasons,
    )
