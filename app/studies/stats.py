"""The statistics of a study, all from ``scipy.stats``; only Holm's step-down (a few lines, and
not in scipy) is written here.

Conventions: a member's response is a float, or None when it is *worst* (diverged, or a
``steps_to`` threshold never reached). Rank statistics (P(better), Wilcoxon) keep worst members
by ranking them below every observed value; mean-based figures (mean, CI, t, d_z) leave them out
and say how many they left out.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 14  # fixed: the same data always gives the same interval
BOOTSTRAP_METHOD = f"BCa bootstrap, {BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}"
CONFIDENCE = 0.95
IQM_CUT = 0.25  # interquartile mean: the mean of the middle half
MIN_PAIRS_FOR_5_PERCENT = 6  # exact Wilcoxon's smallest two-sided p is 2/2^n: n = 6 → 0.031

Obs = float | None  # None: worst (diverged or censored)


def _finite(values: Sequence[Obs]) -> np.ndarray:
    return np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)


def bootstrap_mean_ci(values: np.ndarray) -> tuple[float, float] | None:
    """95% CI of the mean by BCa bootstrap with a fixed RNG; None for fewer than two values.
    Identical values give a zero-width interval (BCa is undefined there)."""
    if len(values) < 2:
        return None
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples: the interval says so (NaN)
        result = stats.bootstrap(
            (values,), np.mean, confidence_level=CONFIDENCE, n_resamples=BOOTSTRAP_RESAMPLES,
            method="BCa", rng=np.random.default_rng(BOOTSTRAP_SEED),
        )
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return low, high


def wilson_ci(k: int, n: int) -> tuple[float, float] | None:
    """Wilson score interval of a proportion k/n (good at 0/n and n/n, unlike Wald)."""
    if n == 0:
        return None
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def describe(values: Sequence[Obs], diverged: int) -> dict[str, Any]:
    """One cell: the finished members' responses (None = worst) and how many diverged."""
    finite = _finite(values)
    n = len(values)
    out: dict[str, Any] = {
        "n_finished": n, "n_diverged": diverged, "n_left_out": n - len(finite),
        "mean": None, "std": None, "median": None, "iqm": None, "min": None, "max": None,
        "mean_ci": None,
        "divergence_rate": diverged / n if n else None,
        "divergence_rate_ci": wilson_ci(diverged, n),
    }
    if len(finite):
        out.update(
            mean=float(np.mean(finite)),
            std=float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
            median=float(np.median(finite)),
            iqm=float(stats.trim_mean(finite, IQM_CUT)),
            min=float(np.min(finite)), max=float(np.max(finite)),
            mean_ci=bootstrap_mean_ci(finite),
        )
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (controls the family-wise error rate; never below the raw p).
    None entries are not tests and stay None."""
    indexed = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(indexed)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact test on the discordant pairs: b vs c under Binomial(b + c, 1/2)."""
    if b + c == 0:
        return 1.0
    return float(stats.binomtest(b, b + c, 0.5).pvalue)


@dataclass(frozen=True)
class WilcoxonResult:
    p: float | None
    n: int  # non-zero differences (zeros are dropped, Wilcoxon's convention)
    method: str


def wilcoxon(diffs: np.ndarray) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test. scipy's "auto": exact for n ≤ 50 without ties or
    zeros, exhaustive permutations for n ≤ 13 with them, else the normal approximation."""
    nonzero = diffs[diffs != 0]
    n = len(nonzero)
    if len(diffs) == 0:
        return WilcoxonResult(None, 0, "no pairs")
    if n == 0:
        return WilcoxonResult(1.0, 0, "all pairs tied")
    ties = len(np.unique(np.abs(nonzero))) < n or n < len(diffs)
    if not ties and n <= 50:
        method = "exact"
    elif ties and n <= 13:
        method = "exact permutation (ties or zeros)"
    else:
        method = "normal approximation"
    p = float(stats.wilcoxon(diffs, zero_method="wilcox", method="auto").pvalue)
    return WilcoxonResult(p, n, method)


def rank_domain(values: Sequence[Obs], goal: str, reference: Sequence[float]) -> np.ndarray:
    """Responses with worst members replaced by a value worse than every observed one
    (``reference``: all the study's finite responses), so that rank statistics count them."""
    ref = np.array(reference, dtype=np.float64)
    lo, hi = (float(ref.min()), float(ref.max())) if len(ref) else (0.0, 0.0)
    worst = lo - (hi - lo) - 1.0 if goal == "max" else hi + (hi - lo) + 1.0
    return np.array([worst if v is None or not math.isfinite(v) else v for v in values],
                    dtype=np.float64)


def paired(ref: Sequence[Obs], other: Sequence[Obs], ref_div: Sequence[bool],
           other_div: Sequence[bool], goal: str, reference: Sequence[float],
           test: bool = True) -> dict[str, Any]:
    """Seed-paired comparison of ``other`` against ``ref`` (position i of each is one pair);
    Δ = other − ref. ``reference``: every finite response of the study (to rank worst ones).
    ``test=False`` skips the Wilcoxon test (with ties it is a permutation test, the costliest
    figure here)."""
    n = len(ref)
    rank_d = rank_domain(other, goal, reference) - rank_domain(ref, goal, reference)
    sign = 1.0 if goal == "max" else -1.0
    wins, ties = int(np.sum(sign * rank_d > 0)), int(np.sum(rank_d == 0))
    both = [i for i in range(n) if ref[i] is not None and other[i] is not None]
    x = np.array([ref[i] for i in both], dtype=np.float64)
    y = np.array([other[i] for i in both], dtype=np.float64)
    d = y - x
    w = wilcoxon(rank_d) if test else WilcoxonResult(None, 0, "not tested")
    out: dict[str, Any] = {
        "n_pairs": n, "n_pairs_finite": len(d), "n_left_out": n - len(d),
        "mean_diff": float(np.mean(d)) if len(d) else None,
        "median_diff": float(np.median(d)) if len(d) else None,
        "mean_diff_ci": bootstrap_mean_ci(d),
        "n_wins": wins, "n_ties": ties,
        "p_better": (wins + 0.5 * ties) / n if n else None,
        "wilcoxon_p": w.p, "wilcoxon_n": w.n, "wilcoxon_method": w.method,
        "ttest_p": None, "cohens_dz": None,
    }
    if len(d) >= 2 and float(np.std(d, ddof=1)) > 0:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # near-identical differences: scipy's precision note
            out["ttest_p"] = float(stats.ttest_rel(y, x).pvalue)
        out["cohens_dz"] = float(np.mean(d) / np.std(d, ddof=1))
    only_level = sum(1 for a, b in zip(ref_div, other_div, strict=True) if b and not a)
    only_ref = sum(1 for a, b in zip(ref_div, other_div, strict=True) if a and not b)
    out["divergence"] = {
        "reference_diverged": int(sum(ref_div)), "level_diverged": int(sum(other_div)),
        "only_level": only_level, "only_reference": only_ref,
        "both": sum(1 for a, b in zip(ref_div, other_div, strict=True) if a and b),
        "mcnemar_p": mcnemar_exact(only_level, only_ref),
    }
    return out


def interaction(quads: Sequence[tuple[Obs, Obs, Obs, Obs]]) -> dict[str, Any]:
    """Difference of differences per seed, (y11 − y01) − (y10 − y00), over seeds where all four
    responses are finite."""
    d = np.array([(q[3] - q[1]) - (q[2] - q[0]) for q in quads  # type: ignore[operator]
                  if all(v is not None for v in q)], dtype=np.float64)
    return {
        "n_seeds": len(quads), "n_finite": len(d), "n_left_out": len(quads) - len(d),
        "mean": float(np.mean(d)) if len(d) else None,
        "ci": bootstrap_mean_ci(d),
    }
