"""Probe telemetry of all members at once (``act/<layer>/p15|p50|p85``, ``units/<layer>/…``).

The solo ``evaluation.activation_percentiles`` runs one eval-mode forward per member and sorts
each layer's pre-activations (``torch.quantile``); here one batched eval-mode forward serves all
members, and each percentile is read from order statistics (a selection, not a sort: numpy's
``partition`` on the CPU, ``kthvalue`` on CUDA) at the ranks ``torch.quantile`` uses,
interpolated the same way: the same values, several times cheaper.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from worker.training.evaluation import PERCENTILES
from worker.training.stacked import StackedMLP, linear
from worker.training.stacked_bn import member_view
from worker.training.units import inactive, unit_state

# Rows of all members per eval forward: bounds memory like evaluation.EVAL_CHUNK does.
EVAL_ROWS = 65536


@torch.no_grad()
def stacked_evaluate(
    model: StackedMLP, xs: torch.Tensor, ys: torch.Tensor
) -> list[tuple[float, float]]:
    """Each member's (loss, accuracy) on its split ``xs`` ``[K, n, features]`` / ``ys``
    ``[K, n]`` with BN on the moving averages — ``evaluation.evaluate`` for all members at
    once (losses summed in float64 as there)."""
    k, n = ys.shape
    loss_sum = torch.zeros(k, dtype=torch.float64, device=xs.device)
    correct = torch.zeros(k, dtype=torch.long, device=xs.device)
    chunk = max(1, EVAL_ROWS // k)
    for start in range(0, n, chunk):
        x, y = xs[:, start : start + chunk], ys[:, start : start + chunk]
        logits = _eval_forward(model, x)
        per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
        loss_sum += per_sample.view(k, -1).sum(dim=1).double()
        correct += (logits.argmax(dim=2) == y).sum(dim=1)
    losses, hits = loss_sum.cpu().tolist(), correct.cpu().tolist()
    return [(loss / n, hit / n) for loss, hit in zip(losses, hits, strict=True)]


def _eval_forward(model: StackedMLP, x: torch.Tensor) -> torch.Tensor:
    for layer, eps in zip(model.layers, model._epsilon, strict=True):
        z = linear(x, layer.weight, layer.bias)
        if layer.running_mean is not None and layer.bn_first:
            z = _eval_bn(z, layer.running_mean, layer.running_var, layer.gamma, layer.beta, eps)
        x = layer.activation(z)
        if layer.running_mean is not None and not layer.bn_first:
            x = _eval_bn(x, layer.running_mean, layer.running_var, layer.gamma, layer.beta, eps)
    return x


@torch.no_grad()
def stacked_percentiles(model: StackedMLP, probe: torch.Tensor) -> torch.Tensor:
    """``[K, n_layers, 3]`` percentiles of each member's pre-activations on its probe inputs
    ``probe`` ``[K, n, features]``, with BN on its moving averages. No host sync."""
    return stacked_probe_telemetry(model, probe)[:, :, :3]


@torch.no_grad()
def stacked_probe_telemetry(model: StackedMLP, probe: torch.Tensor) -> torch.Tensor:
    """``[K, n_layers, 4]``: each member's ``units.probe_telemetry`` (the three percentiles,
    then the fraction of dead or saturated units; NaN for the logits). No host sync."""
    rows, x = [], probe
    for layer, eps in zip(model.layers, model._epsilon, strict=True):
        z = linear(x, layer.weight, layer.bias)
        if layer.running_mean is not None and layer.bn_first:
            z = _eval_bn(z, layer.running_mean, layer.running_var, layer.gamma, layer.beta, eps)
        if unit_state(layer.activation) is None:
            fraction = torch.full((z.shape[0], 1), math.nan, dtype=z.dtype, device=z.device)
        else:  # a unit is inactive on *every* probe input of its member: over dim 1
            fraction = inactive(z, layer.activation).all(dim=1).float().mean(dim=1, keepdim=True)
        rows.append(torch.cat([_percentiles(z.flatten(1)), fraction.to(z.dtype)], dim=1))
        x = layer.activation(z)
        if layer.running_mean is not None and not layer.bn_first:
            x = _eval_bn(x, layer.running_mean, layer.running_var, layer.gamma, layer.beta, eps)
    return torch.stack(rows, dim=1)


def _eval_bn(
    z: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor | None,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    eps: float | torch.Tensor,
) -> torch.Tensor:
    assert var is not None
    out = (z - mean.unsqueeze(1)) * torch.rsqrt(var.unsqueeze(1) + member_view(eps, 3))
    if gamma is not None:
        out = out * gamma.unsqueeze(1)
    if beta is not None:
        out = out + beta.unsqueeze(1)
    return out


def _percentiles(flat: torch.Tensor) -> torch.Tensor:
    """``[K, 3]``: torch.quantile's linear interpolation of each row, from order statistics."""
    n = flat.shape[1]
    ranks = [np.float32(q) * np.float32(n - 1) for _, q in PERCENTILES]  # quantile's float32
    below = [int(np.floor(r)) for r in ranks]
    above = [int(np.ceil(r)) for r in ranks]
    kth = sorted(set(below + above))
    if flat.device.type == "cpu":
        # One partition finds all six order statistics (kthvalue would select six times).
        parts = np.partition(flat.numpy(), kth, axis=1)
        stats = {k: torch.from_numpy(np.ascontiguousarray(parts[:, k])) for k in kth}
    else:
        stats = {k: torch.kthvalue(flat, k + 1, dim=1).values for k in kth}
    out = [
        torch.lerp(stats[lo], stats[hi], float(r - np.float32(lo)))
        for r, lo, hi in zip(ranks, below, above, strict=True)
    ]
    result = torch.stack(out, dim=1)
    # torch.quantile gives NaN for a row holding a NaN; a selection would not.
    return torch.where(flat.isnan().any(dim=1, keepdim=True), float("nan"), result)
