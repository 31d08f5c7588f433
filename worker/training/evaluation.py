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
