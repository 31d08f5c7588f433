"""Dead and saturated units, measured on the same fixed probe as the activation percentiles.

A unit is judged on every probe input at once, from its pre-activation ``z`` (the activation's
input, after BN when BN sits before the activation):

- **dead** (ReLU, leaky ReLU): ``z ≤ 0`` for every probe input — its output is never positive,
  and ReLU passes it no gradient at all (leaky ReLU only its 1% slope);
- **saturated** (sigmoid, tanh, ELU, SELU): the activation's derivative is below 1% of its
  maximum for every probe input. Sigmoid: σ' = σ(1−σ) ≤ 0.0025 ⇔ ``|z| ≥ 5.99``; tanh:
  1 − tanh² ≤ 0.01 ⇔ ``|z| ≥ 2.99``; ELU/SELU (derivative ∝ eᶻ below 0, maximal at 0):
  ``z ≤ ln 0.01 = −4.61``.

Layers with the identity (the logits) are not measured. ``units/<layer>/dead`` or
``units/<layer>/saturated`` is the fraction of the layer's units in that state.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from torch import nn

from worker.training.evaluation import activation_percentiles, activation_points
from worker.training.model import MLP
from worker.training.result import MetricPoint

UnitState = Literal["dead", "saturated"]
DERIVATIVE_FRACTION = 0.01  # "saturated": derivative below this fraction of its maximum

# |z| beyond which σ'(z) = σ(1 − σ) < 1% of σ'(0) = 1/4: σ(1 − σ) = 0.0025.
_SIGMOID_P = (1.0 - math.sqrt(1.0 - 4.0 * 0.25 * DERIVATIVE_FRACTION)) / 2.0
SIGMOID_BOUND = -math.log(_SIGMOID_P / (1.0 - _SIGMOID_P))  # 5.99
TANH_BOUND = math.atanh(math.sqrt(1.0 - DERIVATIVE_FRACTION))  # 2.99
EXP_BOUND = math.log(DERIVATIVE_FRACTION)  # −4.61, ELU and SELU below zero


def unit_state(activation: nn.Module) -> UnitState | None:
    """What a unit of this activation can suffer from; ``None`` for the identity."""
    if isinstance(activation, nn.ReLU | nn.LeakyReLU):
        return "dead"
    if isinstance(activation, nn.Sigmoid | nn.Tanh | nn.ELU | nn.SELU):
        return "saturated"
    return None


def inactive(z: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    """Boolean ``[n, units]``: is each pre-activation dead or saturated for this activation?"""
    if isinstance(activation, nn.ReLU | nn.LeakyReLU):
        return z <= 0
    if isinstance(activation, nn.Sigmoid):
        return z.abs() >= SIGMOID_BOUND
    if isinstance(activation, nn.Tanh):
        return z.abs() >= TANH_BOUND
    if isinstance(activation, nn.ELU | nn.SELU):
        return z <= EXP_BOUND
    raise ValueError(f"no dead or saturated state for {type(activation).__name__}")


def inactive_fraction(z: torch.Tensor, activation: nn.Module) -> torch.Tensor:
    """0-d: the fraction of units (columns of ``z``) inactive for *every* row (probe input)."""
    return inactive(z, activation).all(dim=0).float().mean()


@torch.no_grad()
def unit_fractions(model: MLP, probe: torch.Tensor) -> torch.Tensor:
    """``[n_layers]`` inactive fractions in evaluation mode (NaN for unmeasured layers). Stays on
    the device: no sync."""
    was_training = model.training
    model.eval()
    out, x = [], probe
    for _, layer in model.layer_items():
        z = layer.pre_activation(x)
        if unit_state(layer.activation) is None:
            out.append(torch.full((), math.nan, device=z.device))
        else:
            out.append(inactive_fraction(z, layer.activation))
        x = layer.from_pre_activation(z)
    model.train(was_training)
    return torch.stack(out)


def unit_points(
    model: MLP, values: np.ndarray, step: int, epoch: int, wall_time: float
) -> list[MetricPoint]:
    """``units/<layer>/dead|saturated`` points from ``unit_fractions`` copied to the host."""
    points = []
    for (name, layer), value in zip(model.layer_items(), values.tolist(), strict=True):
        state = unit_state(layer.activation)
        if state is not None:
            points.append(MetricPoint(f"units/{name}/{state}", step, epoch, value, wall_time))
    return points


def probe_telemetry(model: MLP, probe: torch.Tensor) -> torch.Tensor:
    """``[n_layers, 4]``: the activation percentiles, then the inactive fraction. On the device."""
    return torch.cat(
        [activation_percentiles(model, probe), unit_fractions(model, probe)[:, None]], dim=1
    )


def probe_points(
    model: MLP, values: np.ndarray, step: int, epoch: int, wall_time: float
) -> list[MetricPoint]:
    """The points of one ``probe_telemetry`` measurement copied to the host."""
    return [
        *activation_points(model, values[:, :3], step, epoch, wall_time),
        *unit_points(model, values[:, 3], step, epoch, wall_time),
    ]
