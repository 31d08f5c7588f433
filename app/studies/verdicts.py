"""A verdict in words per contrast, from its statistics (decided on the Holm-adjusted p)."""

from __future__ import annotations

from typing import Any

from app.studies.spec import ResponseSpec
from app.studies.stats import MIN_PAIRS_FOR_5_PERCENT

ALPHA = 0.05


def number(x: float) -> str:
    """Three significant digits, without exponents for step counts."""
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.3g}"


def p_value(p: float) -> str:
    return f"{p:.2g}" if p >= 0.0001 else f"{p:.1e}"


def _ci(ci: Any) -> str:
    return f" (95% CI {number(ci[0])} to {number(ci[1])})" if ci else ""


def _divergence(c: dict[str, Any], n: int, level: str, reference: str) -> str:
    div = c["divergence"]
    if not (div["reference_diverged"] or div["level_diverged"]):
        return ""
    return (f"; diverged: {div['level_diverged']} of {n} with {level} vs "
            f"{div['reference_diverged']} of {n} with {reference} "
            f"(McNemar p = {p_value(div['mcnemar_p'])})")


def verdict(c: dict[str, Any], response: ResponseSpec, level: str, reference: str) -> str:
    """``level`` and ``reference`` read like ``path=label``."""
    n = c["n_pairs"]
    tail = _divergence(c, n, level, reference)
    if n == 0:
        return f"no finished pairs yet for {level} vs {reference}"
    if c["wilcoxon_n"] < MIN_PAIRS_FOR_5_PERCENT:
        return (f"too few pairs: with n ≤ {MIN_PAIRS_FOR_5_PERCENT - 1} an exact Wilcoxon test "
                f"cannot reach p < 0.05 ({c['wilcoxon_n']} untied of {n} pairs for {level} vs "
                f"{reference}){tail}")
    wins, ties = c["n_wins"], c["n_ties"]
    tie_text = f", {ties} tied" if ties else ""
    record = f"better in {wins} of {n} seed pairs{tie_text}"
    p = f"Wilcoxon p = {p_value(c['wilcoxon_p'])}"
    if c["holm_p"] is not None and c["holm_p"] != c["wilcoxon_p"]:
        p += f", Holm-adjusted {p_value(c['holm_p'])}"
    mean = c["mean_diff"]
    left_out = f"; {c['n_left_out']} pairs with a diverged or censored member left out of the " \
               "mean" if c["n_left_out"] and mean is not None else ""
    if c["holm_p"] is None or c["holm_p"] >= ALPHA:
        effect = f"mean Δ {number(mean)}{_ci(c['mean_diff_ci'])}, " if mean is not None else ""
        return (f"no detectable difference between {level} and {reference} "
                f"({effect}{record}; {p}){left_out}{tail}")
    better = c["p_better"] > 0.5
    if mean is not None and mean != 0:
        verb = "raises" if mean > 0 else "lowers"
        what = (f"{level} {verb} {response.label} by {number(abs(mean))}"
                f"{_ci(_abs_ci(c['mean_diff_ci'], mean))} against {reference}")
    else:
        what = f"{level} is {'better' if better else 'worse'} than {reference} on {response.label}"
    return f"{what}; {record}; {p}{left_out}{tail}"


def _abs_ci(ci: Any, mean: float) -> Any:
    """The interval of |Δ| for a negative Δ: (−hi, −lo)."""
    if not ci or mean > 0:
        return ci
    return (-ci[1], -ci[0])
