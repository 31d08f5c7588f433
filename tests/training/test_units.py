"""Dead and saturated units on the probe, against hand-computed references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from worker.training.config import Activation, ModelConfig
from worker.training.datasets import DataSplits
from worker.training.model import MLP
from worker.training.units import (
    EXP_BOUND,
    SIGMOID_BOUND,
    TANH_BOUND,
    probe_telemetry,
    unit_fractions,
    unit_points,
)

from .support import make_config, run


def _net(activation: Activation, widths: list[int], n_features: int, **bn: object) -> MLP:
    config = ModelConfig.model_validate({
        "hidden_layers": widths, "activation": activation,
        "batch_norm": {"enabled": bool(bn), **bn},
    })
    return MLP(config, n_features, 2)


@torch.no_grad()
def _set(model: MLP, name: str, weight: list[list[float]], bias: list[float] | None) -> None:
    linear = model.layers[name].linear  # type: ignore[union-attr]
    linear.weight.copy_(torch.tensor(weight))
    if bias is not None:
        linear.bias.copy_(torch.tensor(bias))


def test_the_bounds_are_one_percent_of_the_largest_derivative() -> None:
    s = torch.sigmoid(torch.tensor(SIGMOID_BOUND, dtype=torch.float64))
    assert float(s * (1 - s)) == pytest.approx(0.01 * 0.25)
    assert 1 - math.tanh(TANH_BOUND) ** 2 == pytest.approx(0.01)
    assert math.exp(EXP_BOUND) == pytest.approx(0.01)  # ELU/SELU derivative ∝ eᶻ below 0
    assert (round(SIGMOID_BOUND, 2), round(TANH_BOUND, 2), round(EXP_BOUND, 2)) == (
        5.99, 2.99, -4.61)


def test_relu_dead_units_by_hand() -> None:
    model = _net("relu", [3, 2], 2)
    # hidden1: z = (x0, x1 - 10, -x0 - x1): unit 0 lives, units 1 and 2 never exceed 0.
    _set(model, "hidden1", [[1, 0], [0, 1], [-1, -1]], [0, -10, 0])
    # hidden2 sees (x0, 0, 0): z = (x0, -x0): unit 1 is dead.
    _set(model, "hidden2", [[1, 0, 0], [-1, 0, 0]], [0, 0])
    probe = torch.tensor([[1.0, 2.0], [3.0, 1.0], [2.0, 2.0]])
    values = unit_fractions(model, probe).numpy()
    assert values[:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert math.isnan(values[2])  # the logits are not measured
    points = unit_points(model, values, 7, 1, 0.0)
    assert [(p.name, p.value) for p in points] == [
        ("units/hidden1/dead", pytest.approx(2 / 3)), ("units/hidden2/dead", 0.5)]


def test_a_unit_alive_for_one_probe_input_is_not_dead() -> None:
    model = _net("leaky_relu", [2], 1)
    _set(model, "hidden1", [[1], [-1]], [-2.5, -10])  # z = x - 2.5 > 0 only for x = 3
    probe = torch.tensor([[0.0], [1.0], [3.0]])
    assert unit_fractions(model, probe)[0].item() == pytest.approx(0.5)


# One input x ∈ {-1, 0, 1}; z = w·x + b per unit. Units saturated for every x, by hand:
#   z = x           in [-1, 1]:  none
#   z = x + 7       in [6, 8]:   sigmoid (≥ 5.99), tanh (≥ 2.99)
#   z = x - 4       in [-5, -3]: tanh only;  ELU/SELU no (-3 > -4.61)
#   z = -x - 6      in [-7, -5]: sigmoid no (|-5| < 5.99), tanh yes, ELU/SELU yes (≤ -4.61)
SATURATING = {"sigmoid": 1 / 4, "tanh": 3 / 4, "elu": 1 / 4, "selu": 1 / 4}


@pytest.mark.parametrize(("activation", "expected"), SATURATING.items())
def test_saturated_units_by_hand(activation: Activation, expected: float) -> None:
    model = _net(activation, [4], 1)
    _set(model, "hidden1", [[1], [1], [1], [-1]], [0, 7, -4, -6])
    probe = torch.tensor([[-1.0], [0.0], [1.0]])
    values = unit_fractions(model, probe).numpy()
    assert values[0] == pytest.approx(expected)
    assert unit_points(model, values, 1, 1, 0.0)[0].name == "units/hidden1/saturated"


def test_bn_before_the_activation_is_judged_after_bn() -> None:
    model = _net("relu", [2], 1, placement="before_activation")
    _set(model, "hidden1", [[1], [1]], None)
    bn = model.layers["hidden1"].bn  # type: ignore[union-attr]
    with torch.no_grad():  # eval-mode BN: z = (x - 10) / √(1 + ε) + β
        bn.running_mean.fill_(10.0)
        bn.beta.copy_(torch.tensor([0.0, 20.0]))
    probe = torch.tensor([[1.0], [2.0]])  # unit 0: z < 0 always; unit 1: z > 0 always
    assert unit_fractions(model, probe)[0].item() == 0.5


def test_the_loop_reports_units_with_the_percentiles(digits: DataSplits) -> None:
    cfg = make_config({"model": {"activation": "relu"},
                       "training": {"epochs": 1, "activation_stats_every_steps": 10,
                                    "measure_prediction_cost": False}})
    rec = run(cfg, digits)
    units = {(p.name, p.step) for p in rec.points if p.name.startswith("units/")}
    percentile_steps = {p.step for p in rec.points if p.name == "act/hidden1/p50"}
    assert units == {(f"units/{ly}/dead", s) for ly in ("hidden1", "hidden2")
                     for s in percentile_steps}
    assert len(percentile_steps) > 1
    values = [p.value for p in rec.points if p.name.startswith("units/")]
    assert all(0.0 <= v <= 1.0 for v in values)
    summary = rec.result.summary
    peak = max(values)
    assert summary.peak_dead_units == peak and summary.peak_saturated_units is None
    assert (summary.peak_dead_units_layer, summary.peak_dead_units_step) == next(
        (p.name.split("/")[1], p.step) for p in rec.points
        if p.name.startswith("units/") and p.value == peak)


def test_probe_telemetry_stacks_percentiles_and_units() -> None:
    model = _net("tanh", [5, 3], 4)
    probe = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    values = probe_telemetry(model, probe).numpy()
    assert values.shape == (3, 4)
    assert np.isnan(values[2, 3]) and not np.isnan(values[:2]).any()
