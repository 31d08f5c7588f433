"""The statistics against scipy and against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from app.studies import stats


def test_wilcoxon_eight_wins_is_two_over_two_to_the_eighth() -> None:
    result = stats.wilcoxon(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]))
    assert result.p == pytest.approx(2 / 2**8) and result.method == "exact"


def test_wilcoxon_matches_scipy_with_ties_and_zeros() -> None:
    diffs = np.array([0.1, 0.1, 0.2, -0.1, 0.0, 0.3, 0.2])
    result = stats.wilcoxon(diffs)
    assert result.p == pytest.approx(sps.wilcoxon(diffs).pvalue)
    assert result.n == 6 and result.method.startswith("exact permutation")


def test_wilcoxon_n1_n2_and_all_tied() -> None:
    assert stats.wilcoxon(np.array([0.3])).p == pytest.approx(1.0)  # 2 × 1/2, capped
    assert stats.wilcoxon(np.array([0.3, 0.5])).p == pytest.approx(0.5)  # 2 × 1/4
    tied = stats.wilcoxon(np.zeros(4))
    assert tied.p == 1.0 and tied.n == 0 and tied.method == "all pairs tied"
    assert stats.wilcoxon(np.array([])).p is None


def test_holm_by_hand() -> None:
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]
    assert stats.holm([]) == []


@pytest.mark.parametrize(("k", "n"), [(0, 8), (3, 8), (8, 8), (1, 1)])
def test_wilson_by_hand(k: int, n: int) -> None:
    z = sps.norm.ppf(0.975)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = stats.wilson_ci(k, n) or (None, None)
    assert low == pytest.approx(max(center - half, 0.0), abs=1e-12)
    assert high == pytest.approx(min(center + half, 1.0), abs=1e-12)
    assert stats.wilson_ci(0, 0) is None


def test_mcnemar_exact_by_hand() -> None:
    assert stats.mcnemar_exact(6, 0) == pytest.approx(2 * 0.5**6)
    assert stats.mcnemar_exact(3, 1) == pytest.approx((1 + 4 + 4 + 1) / 16)  # P(X ≤ 1) + P(X ≥ 3)
    assert stats.mcnemar_exact(0, 0) == 1.0


def test_bootstrap_is_scipys_bca_with_the_fixed_seed() -> None:
    values = np.array([0.81, 0.84, 0.79, 0.9, 0.86, 0.83, 0.88, 0.8])
    ci = stats.bootstrap_mean_ci(values)
    expected = sps.bootstrap((values,), np.mean, n_resamples=stats.BOOTSTRAP_RESAMPLES,
                             method="BCa", rng=np.random.default_rng(stats.BOOTSTRAP_SEED))
    assert ci == (expected.confidence_interval.low, expected.confidence_interval.high)
    assert ci == stats.bootstrap_mean_ci(values.copy())  # deterministic
    assert ci[0] < values.mean() < ci[1]
    assert stats.bootstrap_mean_ci(np.array([0.5])) is None
    assert stats.bootstrap_mean_ci(np.array([0.5, 0.5, 0.5])) == (0.5, 0.5)


def test_describe_against_numpy_and_scipy() -> None:
    values = [0.1, 0.5, 0.2, None, 0.9, 0.4]
    out = stats.describe(values, diverged=1)
    finite = np.array([0.1, 0.5, 0.2, 0.9, 0.4])
    assert out["n_finished"] == 6 and out["n_left_out"] == 1 and out["n_diverged"] == 1
    assert out["mean"] == pytest.approx(finite.mean())
    assert out["std"] == pytest.approx(finite.std(ddof=1))
    assert out["median"] == pytest.approx(0.4)
    assert out["iqm"] == pytest.approx(sps.trim_mean(finite, 0.25))
    assert (out["min"], out["max"]) == (0.1, 0.9)
    assert out["divergence_rate"] == pytest.approx(1 / 6)
    one = stats.describe([0.7], diverged=0)
    assert one["std"] is None and one["mean_ci"] is None and one["mean"] == 0.7
    empty = stats.describe([None, None], diverged=2)
    assert empty["mean"] is None and empty["divergence_rate"] == 1.0


def test_paired_against_scipy() -> None:
    ref = [0.80, 0.82, 0.79, 0.85, 0.81]
    other = [0.90, 0.88, 0.91, 0.86, 0.80]
    out = stats.paired(ref, other, [False] * 5, [False] * 5, "max", ref + other)
    d = np.array(other) - np.array(ref)
    assert out["mean_diff"] == pytest.approx(d.mean())
    assert out["median_diff"] == pytest.approx(np.median(d))
    assert out["ttest_p"] == pytest.approx(sps.ttest_rel(other, ref).pvalue)
    assert out["cohens_dz"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert out["wilcoxon_p"] == pytest.approx(sps.wilcoxon(d).pvalue)
    assert (out["n_wins"], out["n_ties"], out["p_better"]) == (4, 0, 0.8)


def test_paired_ties_count_half_and_min_goal() -> None:
    out = stats.paired([10.0, 20.0, 30.0], [8.0, 20.0, 31.0], [False] * 3, [False] * 3, "min",
                       [8.0, 10.0, 20.0, 30.0, 31.0])
    assert (out["n_wins"], out["n_ties"]) == (1, 1)
    assert out["p_better"] == pytest.approx(1.5 / 3)


def test_an_all_diverged_arm_ranks_worst_and_leaves_the_mean_out() -> None:
    n = 8
    ok = [0.9 + 0.001 * i for i in range(n)]
    out = stats.paired([None] * n, ok, [True] * n, [False] * n, "max", ok)
    assert out["n_wins"] == n and out["p_better"] == 1.0
    assert out["wilcoxon_p"] == pytest.approx(2 / 2**n)
    assert out["mean_diff"] is None and out["mean_diff_ci"] is None and out["n_left_out"] == n
    assert out["ttest_p"] is None and out["cohens_dz"] is None
    div = out["divergence"]
    assert (div["only_reference"], div["only_level"], div["both"]) == (n, 0, 0)
    assert div["mcnemar_p"] == pytest.approx(2 / 2**n)
    both = stats.paired([None] * 3, [None] * 3, [True] * 3, [True] * 3, "max", [])
    assert both["n_ties"] == 3 and both["wilcoxon_p"] == 1.0 and both["p_better"] == 0.5


def test_paired_n1_and_n2() -> None:
    one = stats.paired([0.5], [0.6], [False], [False], "max", [0.5, 0.6])
    assert one["mean_diff"] == pytest.approx(0.1) and one["mean_diff_ci"] is None
    assert one["ttest_p"] is None and one["wilcoxon_p"] == pytest.approx(1.0)
    two = stats.paired([0.5, 0.4], [0.6, 0.7], [False] * 2, [False] * 2, "max", [0.4, 0.7])
    assert two["wilcoxon_p"] == pytest.approx(0.5)
    assert two["ttest_p"] == pytest.approx(sps.ttest_rel([0.6, 0.7], [0.5, 0.4]).pvalue)


def test_interaction_by_hand() -> None:
    # (y11 − y01) − (y10 − y00): seed 1: (4 − 2) − (3 − 1) = 0; seed 2: (9 − 2) − (3 − 1) = 5
    quads = [(1.0, 2.0, 3.0, 4.0), (1.0, 2.0, 3.0, 9.0), (1.0, None, 3.0, 4.0)]
    out = stats.interaction(quads)
    assert out["mean"] == pytest.approx(2.5) and out["n_finite"] == 2 and out["n_left_out"] == 1
