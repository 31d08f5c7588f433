"""Evaluation with the moving averages (the seed's ``is_training=False``) and per-epoch points."""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from worker.training.datasets import DataSplits
from worker.training.model import MLP
from worker.training.result import MetricPoint

EVAL_CHUNK = 8192  # rows per forward pass: bounds memory for large test sets


@torch.no_grad()
def evaluate(model: MLP, data: DataSplits, device: torch.device) -> dict[str, tuple[float, float]]:
    """Loss and accuracy per non-empty split ("val", "test"), in eval mode."""
    was_training = model.training
    model.eval()
    results: dict[str, tuple[float, float]] = {}
    for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
        if len(x):
            results[split] = _loss_and_accuracy(model, x, y, device)
    model.train(was_training)
    return results


def _loss_and_accuracy(
    model: MLP, x: np.ndarray, y: np.ndarray, device: torch.device
) -> tuple[float, float]:
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for start in range(0, len(x), EVAL_CHUNK):
        xb = torch.from_numpy(x[start : start + EVAL_CHUNK]).to(device)
        yb = torch.from_numpy(y[start : start + EVAL_CHUNK]).to(device)
        logits = model(xb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    return loss_sum.item() / len(x), correct.item() / len(x)


def epoch_points(
    model: MLP,
    evals: dict[str, tuple[float, float]],
    train_stats: tuple[float, float],
    step: int,
    epoch: int,
) -> list[MetricPoint]:
    """Per-epoch metrics: train/val/test loss and accuracy, and each BN layer's moving averages."""
    now = time.time()
    values: dict[str, float] = {"train_loss": train_stats[0], "train_accuracy": train_stats[1]}
    for split, (loss, acc) in evals.items():
        values[f"{split}_loss"] = loss
        values[f"{split}_accuracy"] = acc
    for name, bn in model.bn_layers().items():
        values[f"bn/{name}/running_mean_abs"] = bn.running_mean.abs().mean().item()
        values[f"bn/{name}/running_var_mean"] = bn.running_var.mean().item()
    return [MetricPoint(name, step, epoch, value, now) for name, value in values.items()]


# Ioffe & Szegedy's Figure 1(b, c): percentiles of the activation's input over training.
PERCENTILES = (("p15", 0.15), ("p50", 0.50), ("p85", 0.85))
PROBE_SIZE = 1024


def probe_inputs(data: DataSplits) -> np.ndarray:
    """A fixed set of inputs (validation, else test, else training) the percentiles are taken on,
    so that successive measurements differ only because the network changed."""
    for x in (data.x_val, data.x_test, data.x_train):
        if len(x):
            return x[:PROBE_SIZE]
    raise ValueError("no data to probe activations with")


@torch.no_grad()
def activation_percentiles(model: MLP, probe: torch.Tensor) -> torch.Tensor:
    """[n_layers, 3] percentiles of each layer's pre-activation over all its units and the probe
    inputs, in evaluation mode (BN uses its moving averages). Stays on the device: no sync."""
    was_training = model.training
    model.eval()
    q = torch.tensor([p for _, p in PERCENTILES], device=probe.device)
    rows, x = [], probe
    for _, layer in model.layer_items():
        z = layer.pre_activation(x)
        rows.append(torch.quantile(z.flatten().float(), q))
        x = layer.from_pre_activation(z)
    model.train(was_training)
    return torch.stack(rows)


def activation_points(
    model: MLP, values: np.ndarray, step: int, epoch: int, wall_time: float
) -> list[MetricPoint]:
    """``act/<layer>/p15|p50|p85`` points from ``activation_percentiles`` copied to the host."""
    return [
        MetricPoint(f"act/{name}/{label}", step, epoch, float(values[li, pi]), wall_time)
        for li, (name, _) in enumerate(model.layer_items())
        for pi, (label, _) in enumerate(PERCENTILES)
    ]
