"""The results document: pairing by seed and levels, Holm across contrasts, verdicts."""

from __future__ import annotations

from typing import Any

import pytest

from app.studies.results import Outcome, document, response_of
from app.studies.spec import ResponseSpec, StudySpec, example_spec


def study(**changes: Any) -> StudySpec:
    return StudySpec.model_validate({**example_spec(), **changes})


def test_bn_verdict_reads_like_the_issue() -> None:
    s = study()
    outcomes = [Outcome(0, seed, "succeeded", 0.1 + 0.001 * seed, False) for seed in range(8)]
    outcomes += [Outcome(1, seed, "succeeded", 0.9 - 0.002 * seed, False) for seed in range(8)]
    doc = document(s, outcomes, 16)
    [c] = doc["contrasts"]
    assert c["n_pairs"] == 8 and c["n_wins"] == 8 and c["holm_p"] == c["wilcoxon_p"]
    assert c["verdict"].startswith(
        "model.batch_norm.enabled=true raises final_test_accuracy by 0.789 (95% CI")
    assert "better in 8 of 8 seed pairs; Wilcoxon p = 0.0078" in c["verdict"]
    assert doc["progress"] == {"total": 16, "by_status": {"succeeded": 16}, "finished": 16,
                               "terminal": True}
    assert doc["interactions"] == []


def test_too_few_pairs_and_no_difference() -> None:
    s = study(seeds=4)
    few = [Outcome(c, seed, "succeeded", 0.5 + c * 0.1 + seed * 0.01, False)
           for c in (0, 1) for seed in range(4)]
    assert document(s, few, 8)["contrasts"][0]["verdict"].startswith("too few pairs: with n ≤ 5")
    s8 = study()
    noise = [Outcome(c, seed, "succeeded", 0.5 + (0.01 if (seed + c) % 2 else -0.01) * seed,
                     False) for c in (0, 1) for seed in range(8)]
    assert document(s8, noise, 16)["contrasts"][0]["verdict"].startswith(
        "no detectable difference")


def test_pairs_match_seed_and_the_other_factors_levels_and_holm_spans_contrasts() -> None:
    s = study(factors={"model.batch_norm.enabled": [False, True],
                       "optimizer.learning_rate": [0.1, 0.5, 1.0]}, seeds=8)
    outcomes = [Outcome(cell, seed, "succeeded", cell * 0.1 + seed * 0.001, False)
                for cell in range(6) for seed in range(8)]
    outcomes.append(Outcome(0, 99, "failed", None, False))  # not a seed of the study: ignored
    doc = document(s, outcomes, 48)
    assert [c["n_pairs"] for c in doc["contrasts"]] == [24, 16, 16]
    by_level = doc["contrasts"][0]["by_level"]  # BN within each learning rate
    assert [b["at"] for b in by_level] == [{"optimizer.learning_rate": x}
                                           for x in ("0.1", "0.5", "1.0")]
    assert [b["n_pairs"] for b in by_level] == [8, 8, 8]
    assert by_level[2]["mean_diff"] == pytest.approx(0.3) and by_level[2]["n_wins"] == 8
    assert [(c["factor"], c["level"], c["reference"]) for c in doc["contrasts"]][1] == (
        "optimizer.learning_rate", "0.5", "0.1")
    raw = sorted(c["wilcoxon_p"] for c in doc["contrasts"])
    assert max(c["holm_p"] for c in doc["contrasts"]) >= raw[-1]
    assert len(doc["interactions"]) == 2 and doc["interactions"][0]["n_seeds"] == 8
    every = document(s, outcomes, 48, pairs="all")["contrasts"]
    assert len(every) == 1 + 3


def test_a_diverged_member_is_worst_and_failed_ones_are_not_finished() -> None:
    s = study(seeds=2)
    outcomes = [Outcome(0, 0, "diverged", None, True), Outcome(0, 1, "failed", None, False),
                Outcome(1, 0, "succeeded", 0.9, False), Outcome(1, 1, "succeeded", 0.8, False)]
    doc = document(s, outcomes, 4)
    assert doc["cells"][0]["n_finished"] == 1 and doc["cells"][0]["divergence_rate"] == 1.0
    [c] = doc["contrasts"]
    assert c["n_pairs"] == 1 and c["n_wins"] == 1 and c["mean_diff"] is None
    assert not doc["progress"]["terminal"] or doc["progress"]["finished"] == 4


def test_response_values_and_censoring() -> None:
    acc = ResponseSpec(metric="final_test_accuracy")
    assert response_of(acc, "succeeded", {"final_test_accuracy": 0.9}, None) == 0.9
    assert response_of(acc, "diverged", {"final_test_accuracy": 0.9}, None) is None
    assert response_of(ResponseSpec(metric="final_loss"), "succeeded", {"final_loss": "NaN"},
                       None) is None
    steps = ResponseSpec(metric="steps_to", of="val_accuracy", threshold=0.9)
    assert steps.goal == "min" and steps.reaches_upward
    assert response_of(steps, "succeeded", {}, 120) == 120.0
    assert response_of(steps, "succeeded", {}, None) is None  # never reached: censored, worst


def test_a_pooled_verdict_points_at_an_interaction() -> None:
    s = study(factors={"model.batch_norm.enabled": [False, True],
                       "optimizer.learning_rate": [0.1, 2.0]}, seeds=8)
    # BN matters only at lr 2.0 (cells: 0 = off/0.1, 1 = off/2.0, 2 = on/0.1, 3 = on/2.0)
    base = {0: 0.90, 1: 0.10, 2: 0.90, 3: 0.95}
    outcomes = [Outcome(cell, seed, "succeeded",
                        base[cell] + 0.001 * seed * (-1 if cell == 2 else 1), False)
                for cell in range(4) for seed in range(8)]
    bn = document(s, outcomes, 32)["contrasts"][0]
    assert "the effect depends on optimizer.learning_rate: interaction at " \
           "optimizer.learning_rate=2.0 0.85" in bn["verdict"]
    assert [b["n_wins"] for b in bn["by_level"]] == [0, 8]
