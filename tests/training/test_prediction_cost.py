"""Prediction cost: what is timed and how it is reported (no wall-clock bounds: see bench/)."""

from __future__ import annotations

import math

import pytest
import torch

from worker.training.config import ModelConfig
from worker.training.datasets import DataSplits
from worker.training.model import MLP
from worker.training.prediction_cost import BATCH_SIZES, measure_prediction_cost

from .support import make_config, run


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


@pytest.mark.parametrize("bn", [True, False])
def test_three_models_at_two_batch_sizes(bn: bool) -> None:
    config = ModelConfig.model_validate({"hidden_layers": [16, 8],
                                         "batch_norm": {"enabled": bn}})
    model = MLP(config, 12, 3).train()
    torch.manual_seed(5)
    costs = measure_prediction_cost(model, config)
    after = torch.rand(2)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(2), after)  # the run's random stream is left alone
    assert model.training  # and the model's mode
    assert [c.batch_size for c in costs] == list(BATCH_SIZES)
    for c in costs:
        assert _finite_positive(c.trained_us, c.folded_us, c.no_bn_us)
        assert c.trained_vs_no_bn == pytest.approx(c.trained_us / c.no_bn_us)
        assert c.folded_vs_no_bn == pytest.approx(c.folded_us / c.no_bn_us)
        if not bn:  # nothing to fold: the folded model is the model itself
            assert c.folded_us == c.trained_us


def test_the_summary_carries_it_unless_switched_off_or_cancelled(digits: DataSplits) -> None:
    timed = {"training": {"epochs": 1, "measure_prediction_cost": True}}  # the default
    on = run(make_config(timed), digits).result.summary
    assert on.prediction_cost is not None and len(on.prediction_cost) == len(BATCH_SIZES)
    dumped = on.model_dump(mode="json")["prediction_cost"][0]
    assert set(dumped) == {"batch_size", "trained_us", "folded_us", "no_bn_us",
                           "trained_vs_no_bn", "folded_vs_no_bn"}
    off = make_config({"training": {"epochs": 1, "measure_prediction_cost": False}})
    assert run(off, digits).result.summary.prediction_cost is None
    cancelled = run(make_config(timed), digits, flush_every_s=0.0,
                    should_stop=lambda: True).result
    assert cancelled.status == "cancelled" and cancelled.summary.prediction_cost is None
