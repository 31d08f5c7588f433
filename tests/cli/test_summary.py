"""Summary rows as `normlab train` and `normlab status` print them."""

from __future__ import annotations

from app.cli.summary import summary_rows
from app.cli.train import summary_text
from worker.training.result import PredictionCost, TrainSummary


def test_collapse_reason_and_prediction_cost_are_shown() -> None:
    summary = TrainSummary(
        status="succeeded", collapsed_at_step=6,
        collapse_reason="all units of hidden3 dead after grad norm 2.7e4 at step 6",
        prediction_cost=[PredictionCost(batch_size=1, trained_us=80.0, folded_us=41.0,
                                        no_bn_us=40.0, trained_vs_no_bn=2.0,
                                        folded_vs_no_bn=1.025)],
    )
    rows = dict(summary_rows(summary.model_dump(mode="json")))
    assert rows["collapse_reason"] == "all units of hidden3 dead after grad norm 2.7e4 at step 6"
    assert rows["collapsed_at_step"] == "6" and rows["diverged_at_step"] == "—"
    assert rows["prediction µs/sample, batch 1"] == (
        "trained 80 · folded 41 · no BN 40 (vs no BN: 2.00× trained, 1.02× folded)")
    text = summary_text(summary, "t")  # the plain table on stdout
    assert "all units of hidden3 dead" in text and "None" not in text
