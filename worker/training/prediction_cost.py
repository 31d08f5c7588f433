"""How long eval-mode prediction takes: as trained, with BN folded, and without BN at all.

Timing method (docs/engine.md, "Prediction cost"): for each batch size, the models are timed in
turn within every repeat (so a slow moment of a shared machine hits all of them alike); a timing
is a block of back-to-back forward passes under ``torch.inference_mode`` long enough
(``MIN_BLOCK_S``) for the timer's resolution and the loop's overhead not to matter, bracketed by
``torch.cuda.synchronize`` on a GPU; the order of the models rotates from repeat to repeat; the
figure is the median over repeats, per sample. Repeats
shrink for big models so the whole measurement stays near ``BUDGET_S`` per batch size (never
fewer than ``MIN_REPEATS``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from worker.training.config import ModelConfig
from worker.training.folding import fold_batch_norm, plain_copy
from worker.training.model import MLP
from worker.training.result import PredictionCost

BATCH_SIZES = (1, 1024)
MAX_REPEATS = 15
MIN_REPEATS = 5
MIN_BLOCK_S = 2e-3
MAX_CALLS_PER_BLOCK = 1000
BUDGET_S = 1.0


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _once(model: MLP, x: torch.Tensor, sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    model(x)
    sync()
    return time.perf_counter() - start


def _block(model: MLP, x: torch.Tensor, calls: int, sync: Callable[[], None]) -> float:
    """Seconds per forward pass over ``calls`` back-to-back passes."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        model(x)
    sync()
    return (time.perf_counter() - start) / calls


@torch.inference_mode()
def time_models(models: list[MLP], x: torch.Tensor) -> list[float]:
    """Median seconds per forward pass of each model on ``x``, interleaved (models in eval mode)."""
    sync = _synchronizer(x.device)
    for m in models:  # warm-up: allocations, lazy initialization
        _once(m, x, sync)
    first = [_once(m, x, sync) for m in models]  # a first guess of one pass
    calls = [min(MAX_CALLS_PER_BLOCK, max(1, math.ceil(MIN_BLOCK_S / max(t, 1e-9)))) for t in first]
    per_repeat = sum(max(t * c, MIN_BLOCK_S) for t, c in zip(first, calls, strict=True))
    repeats = max(MIN_REPEATS, min(MAX_REPEATS, int(BUDGET_S / per_repeat)))
    timings: list[list[float]] = [[] for _ in models]
    for r in range(repeats):
        for k in range(len(models)):  # rotated: no model is always timed first or last
            j = (k + r) % len(models)
            timings[j].append(_block(models[j], x, calls[j], sync))
    return [statistics.median(t) for t in timings]


def measure_prediction_cost(model: MLP, config: ModelConfig) -> list[PredictionCost]:
    """µs per sample at each of ``BATCH_SIZES`` on the model's device, for the model as trained,
    folded, and an untrained BN-free copy (timing does not depend on the weights' values)."""
    layers = model.layer_items()
    weight = layers[0][1].linear.weight
    n_features, n_classes = weight.shape[1], layers[-1][1].linear.out_features
    was_training = model.training
    model.eval()
    has_bn = bool(model.bn_layers())
    no_bn = plain_copy(config, n_features, n_classes).to(weight.device, weight.dtype).eval()
    # Without BN there is nothing to fold: the folded model is the model itself.
    models = [model, fold_batch_norm(model, config), no_bn] if has_bn else [model, no_bn]
    gen = torch.Generator().manual_seed(0)
    costs = []
    for batch in BATCH_SIZES:
        x = torch.randn(batch, n_features, generator=gen).to(weight.device, weight.dtype)
        seconds = time_models(models, x)
        trained, folded, plain = (seconds if has_bn else [seconds[0], *seconds])
        us = [s / batch * 1e6 for s in (trained, folded, plain)]
        costs.append(
            PredictionCost(
                batch_size=batch,
                trained_us=us[0],
                folded_us=us[1],
                no_bn_us=us[2],
                trained_vs_no_bn=us[0] / us[2],
                folded_vs_no_bn=us[1] / us[2],
            )
        )
    model.train(was_training)
    return costs
