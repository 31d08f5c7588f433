"""Gradient clipping that also measures itself, without leaving the device.

``value`` is ``tf.clip_by_value`` applied to every gradient (β and γ included); ``norm`` rescales
the global L2 norm to at most the threshold (Pascanu et al. 2013, same coefficient as
``torch.nn.utils.clip_grad_norm_``).

The device side (``clip_gradients``) only produces a handful of 0-d tensors per step — one norm
per parameter, plus what the mode needs. Everything reported (global norm before and after,
``clip_fraction``, per-layer norms) is derived from them on the host, in float64, once per flush
(``decode``): the hot loop stays at a few fused ``_foreach`` kernels per step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from worker.training.config import ClippingConfig

# Added to the norm before dividing, exactly as torch.nn.utils.clip_grad_norm_ does.
NORM_EPS = 1e-6


@dataclass
class ClipStats:
    """0-d device tensors measured while clipping. Reading them on the host is a sync point."""

    norms: list[torch.Tensor]  # per-parameter L2 norm of the gradient before clipping
    coef: torch.Tensor | None = None  # norm mode: the factor every gradient was multiplied by
    norms_after: list[torch.Tensor] | None = None  # value mode, measured: norms after clipping
    sqrt_clipped: list[torch.Tensor] | None = None  # value mode, measured: √(elements clipped)

    def tensors(self) -> list[torch.Tensor]:
        """The stats flattened in the column order ``decode`` expects."""
        out = list(self.norms)
        if self.coef is not None:
            out.append(self.coef)
        if self.norms_after is not None and self.sqrt_clipped is not None:
            out += self.norms_after
            out += self.sqrt_clipped
        return out


@dataclass
class ClipSummary:
    """Host-side values (float64 arrays, one entry per step)."""

    grad_norm: np.ndarray  # global L2 norm before clipping
    grad_norm_clipped: np.ndarray  # after clipping (NaN where not measured)
    clip_fraction: np.ndarray  # share of elements clipped / 1.0 if rescaled (NaN: not measured)
    param_norms: np.ndarray  # [n_steps, n_params] per-parameter norms before clipping


def clip_gradients(
    grads: list[torch.Tensor], config: ClippingConfig, *, measure: bool = True
) -> ClipStats:
    """Clip ``grads`` in place and return device-side statistics.

    Per-parameter norms before clipping are always computed (they give the global and per-layer
    norms and divergence detection). ``measure=False`` skips what only value-mode logging needs
    (the post-clip norms and the count of clipped elements), so unlogged steps stay cheap.
    """
    norms = list(torch._foreach_norm(grads))
    if config.mode == "none":
        return ClipStats(norms)
    threshold = config.threshold
    if config.mode == "norm":
        total = torch.linalg.vector_norm(torch.stack(norms))
        coef = torch.clamp(threshold / (total + NORM_EPS), max=1.0)
        torch._foreach_mul_(grads, coef)
        return ClipStats(norms, coef=coef)
    # mode == "value". Elements clipped: the indicator |g| > t is sign(max(|g| - t, 0)), and the
    # L2 norm of a 0/1 tensor is the square root of its count (L2 is the fast _foreach_norm path;
    # ``decode`` squares and rounds it).
    sqrt_clipped: list[torch.Tensor] | None = None
    if measure:
        over = torch._foreach_abs(grads)
        torch._foreach_sub_(over, threshold)
        torch._foreach_clamp_min_(over, 0.0)
        torch._foreach_sign_(over)
        sqrt_clipped = list(torch._foreach_norm(over))
    torch._foreach_clamp_min_(grads, -threshold)
    torch._foreach_clamp_max_(grads, threshold)
    if sqrt_clipped is None:
        return ClipStats(norms)
    return ClipStats(norms, norms_after=list(torch._foreach_norm(grads)), sqrt_clipped=sqrt_clipped)


def decode(
    columns: np.ndarray, config: ClippingConfig, numels: list[int], *, measured: bool
) -> ClipSummary:
    """Turn rows of ``ClipStats.tensors()`` values (``[n_steps, width]``) into reported values."""
    p = len(numels)
    cols = np.asarray(columns, dtype=np.float64).reshape(len(columns), -1)
    norms = cols[:, :p]
    grad_norm = _global_norm(norms)
    n = len(cols)
    if config.mode == "none":
        return ClipSummary(grad_norm, grad_norm.copy(), np.zeros(n), norms)
    if config.mode == "norm":
        coef = cols[:, p]
        return ClipSummary(grad_norm, grad_norm * coef, (coef < 1.0).astype(np.float64), norms)
    if not measured:
        nan = np.full(n, np.nan)
        return ClipSummary(grad_norm, nan, nan.copy(), norms)
    after = _global_norm(cols[:, p : 2 * p])
    n_clipped = np.round(np.square(cols[:, 2 * p : 3 * p])).sum(axis=1)
    fraction = n_clipped / float(sum(numels))
    return ClipSummary(grad_norm, after, fraction, norms)


def summarize(stats: ClipStats, config: ClippingConfig, numels: list[int]) -> ClipSummary:
    """One step's statistics on the host (a sync point: for tests and debugging)."""
    row = torch.stack(stats.tensors()).to("cpu", torch.float64).numpy()[None, :]
    return decode(row, config, numels, measured=stats.sqrt_clipped is not None)


def _global_norm(norms: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.sqrt(np.square(norms).sum(axis=1))
    return result
