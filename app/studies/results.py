"""A study's results document: progress, per-cell statistics, seed-paired contrasts per factor,
the two-factor interaction, and verdicts. The service and ``study run --local`` both use it."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from app.studies import stats
from app.studies.grid import Cell, cells
from app.studies.spec import ResponseSpec, StudySpec
from app.studies.verdicts import number, verdict

FINISHED = ("succeeded", "diverged")  # members with a response (failed/cancelled have none)
TERMINAL = ("succeeded", "diverged", "failed", "cancelled")
Pairs = Literal["first", "all"]


@dataclass(frozen=True)
class Outcome:
    """One member as the statistics see it."""

    cell: int
    seed: int
    status: str
    response: float | None  # None: worst (diverged, censored) or not finished
    diverged: bool


def response_of(response: ResponseSpec, status: str, summary: dict[str, Any] | None,
                reached: int | None) -> float | None:
    """A finished member's response; None ranks as worst (diverged, or steps_to not reached)."""
    if status != "succeeded" or summary is None:
        return None
    value = reached if response.metric == "steps_to" else summary.get(response.metric)
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None  # "NaN"/"Infinity" strings or a metric the run never produced
    return float(value)


def outcome(response: ResponseSpec, cell: int, seed: int, status: str,
            summary: dict[str, Any] | None, reached: int | None = None) -> Outcome:
    return Outcome(cell, seed, status, response_of(response, status, summary, reached),
                   status == "diverged")


def progress(statuses: Sequence[str], total: int) -> dict[str, Any]:
    counts = Counter(statuses)
    terminal = sum(counts[s] for s in TERMINAL)
    return {"total": total, "by_status": dict(sorted(counts.items())),
            "finished": terminal, "terminal": terminal == total}


def _cell_index(levels: Sequence[int], sizes: Sequence[int]) -> int:
    index = 0
    for level, size in zip(levels, sizes, strict=True):
        index = index * size + level
    return index


def _named(spec: StudySpec, cell: Cell) -> dict[str, str]:
    return dict(zip(spec.factors, cell.labels, strict=True))


def analyse(spec: StudySpec, outcomes: Sequence[Outcome], pairs: Pairs = "first"
            ) -> dict[str, Any]:
    """Cells, contrasts (with Holm across all of them) and, for two factors, interactions."""
    grid = cells(spec)
    done = {(o.cell, o.seed): o for o in outcomes if o.status in FINISHED}
    reference = [o.response for o in done.values() if o.response is not None]
    goal = spec.response.goal or "max"
    cell_stats = []
    for cell in grid:
        members = [done[(cell.index, s)] for s in spec.seeds if (cell.index, s) in done]
        cell_stats.append({
            "index": cell.index, "levels": _named(spec, cell),
            **stats.describe([m.response for m in members], sum(m.diverged for m in members)),
        })
    contrasts = _contrasts(spec, grid, done, reference, goal, pairs)
    for c, p in zip(contrasts, stats.holm([c["wilcoxon_p"] for c in contrasts]), strict=True):
        c["holm_p"] = p
        c["verdict"] = verdict(c, spec.response, f"{c['factor']}={c['level']}",
                               f"{c['factor']}={c['reference']}")
    interactions = _interactions(spec, done) if len(spec.factors) == 2 else []
    _note_interactions(contrasts, interactions)
    return {"cells": cell_stats, "contrasts": contrasts, "interactions": interactions}


def _note_interactions(contrasts: list[dict[str, Any]],
                       interactions: list[dict[str, Any]]) -> None:
    """A contrast pooled over the other factor's levels can hide an effect confined to one of
    them: its verdict says so when an interaction's CI excludes zero."""
    for c in contrasts:
        for i in interactions:
            ci = i["ci"]
            position = i["factors"].index(c["factor"])
            if (ci is None or ci[0] <= 0 <= ci[1] or i["levels"][position] != c["level"]
                    or i["references"][position] != c["reference"]):
                continue
            other = i["factors"][1 - position]
            c["verdict"] += (f"; the effect depends on {other}: interaction at "
                             f"{other}={i['levels'][1 - position]} {number(i['mean'])} "
                             f"(95% CI {number(ci[0])} to {number(ci[1])}), see by_level")
            break


def _contrasts(spec: StudySpec, grid: list[Cell], done: dict[tuple[int, int], Outcome],
               reference: list[float], goal: str, pairs: Pairs) -> list[dict[str, Any]]:
    sizes = [len(f.levels) for f in spec.factors.values()]
    out = []
    for fi, (path, factor) in enumerate(spec.factors.items()):
        labels = factor.labels or []
        n = len(factor.levels)
        level_pairs = ([(0, j) for j in range(1, n)] if pairs == "first"
                       else [(i, j) for i in range(n) for j in range(i + 1, n)])
        for r, lv in level_pairs:
            matched: list[tuple[Cell, Outcome, Outcome]] = []
            for cell in grid:
                if cell.levels[fi] != r:
                    continue
                partner = _cell_index([*cell.levels[:fi], lv, *cell.levels[fi + 1:]], sizes)
                for seed in spec.seeds:
                    a, b = done.get((cell.index, seed)), done.get((partner, seed))
                    if a is not None and b is not None:
                        matched.append((cell, a, b))
            out.append({"factor": path, "level": labels[lv], "reference": labels[r],
                        **_paired(matched, goal, reference),
                        "by_level": _simple_effects(spec, fi, matched, goal, reference)})
    return out


def _paired(matched: Sequence[tuple[Cell, Outcome, Outcome]], goal: str,
            reference: list[float], test: bool = True) -> dict[str, Any]:
    return stats.paired([a.response for _, a, _ in matched], [b.response for _, _, b in matched],
                        [a.diverged for _, a, _ in matched], [b.diverged for _, _, b in matched],
                        goal, reference, test)


SIMPLE_FIELDS = ("n_pairs", "n_left_out", "mean_diff", "mean_diff_ci", "n_wins", "n_ties",
                 "p_better", "divergence")


def _simple_effects(spec: StudySpec, fi: int, matched: Sequence[tuple[Cell, Outcome, Outcome]],
                    goal: str, reference: list[float]) -> list[dict[str, Any]]:
    """The same contrast within each level of every other factor (descriptive: no test, not
    part of the Holm family, no verdict). It shows where an effect lives when factors
    interact."""
    out = []
    for fj, (other, factor) in enumerate(spec.factors.items()):
        if fj == fi:
            continue
        for j, label in enumerate(factor.labels or []):
            subset = [m for m in matched if m[0].levels[fj] == j]
            result = _paired(subset, goal, reference, test=False)
            out.append({"at": {other: label}, **{k: result[k] for k in SIMPLE_FIELDS}})
    return out


def _interactions(spec: StudySpec, done: dict[tuple[int, int], Outcome]) -> list[dict[str, Any]]:
    (pa, fa), (pb, fb) = spec.factors.items()
    nb = len(fb.levels)
    la, lb = fa.labels or [], fb.labels or []
    out = []
    for i in range(1, len(fa.levels)):
        for j in range(1, nb):
            quads: list[tuple[float | None, float | None, float | None, float | None]] = []
            for seed in spec.seeds:
                four = [done.get((a * nb + b, seed)) for a, b in ((0, 0), (0, j), (i, 0), (i, j))]
                if all(o is not None for o in four):
                    quads.append(tuple(o.response for o in four if o is not None))  # type: ignore[arg-type]
            out.append({
                "factors": [pa, pb], "levels": [la[i], lb[j]], "references": [la[0], lb[0]],
                "definition": f"({pa}={la[i]} − {pa}={la[0]}) at {pb}={lb[j]} minus the same "
                              f"at {pb}={lb[0]}",
                **stats.interaction(quads),
            })
    return out


def document(spec: StudySpec, outcomes: Sequence[Outcome], total: int,
             pairs: Pairs = "first") -> dict[str, Any]:
    """The whole results document (deterministic: same members, same bytes)."""
    return {
        "progress": progress([o.status for o in outcomes], total),
        "response": {"metric": spec.response.metric, "label": spec.response.label,
                     "goal": spec.response.goal},
        "methods": {
            "mean_ci": stats.BOOTSTRAP_METHOD, "proportion_ci": "Wilson score, 95%",
            "paired_test": "Wilcoxon signed-rank, two-sided (scipy.stats.wilcoxon)",
            "multiple_comparisons": "Holm across every contrast of the study",
            "divergence_test": "McNemar exact (binomial on discordant pairs)",
            "worst": "diverged or censored members rank below every observed value; "
                     "mean-based figures leave them out and count them in n_left_out",
        },
        **analyse(spec, outcomes, pairs),
    }
