"""Batch normalization of K stacked members at once: ``[K, batch, C]``, statistics per member.

Each member normalizes with its own batch statistics and its own epsilon, and updates its own
moving averages with its own decay, exactly as ``TFBatchNorm`` does for one network (biased
variance to normalize, unbiased variance into the moving average). A hand-written backward
keeps the op count low: the fused step is launch-bound, not FLOP-bound.
"""

from __future__ import annotations

from typing import Any

import torch

# A per-member hyperparameter: one Python float shared by all members (the cheap, exact path),
# or a [K] tensor.
Hyper = float | torch.Tensor


def member_hyper(values: list[float], device: torch.device) -> Hyper:
    """One value per member as a ``Hyper``: a float when all members agree."""
    if all(v == values[0] for v in values):
        return float(values[0])
    return torch.tensor(values, dtype=torch.float32, device=device)


def member_view(value: Hyper, ndim: int) -> Hyper:
    """``value`` broadcastable against a ``[K, …]`` tensor of ``ndim`` dimensions."""
    if isinstance(value, torch.Tensor):
        return value.view(-1, *([1] * (ndim - 1)))
    return value


class _StackedBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        z: torch.Tensor,
        gamma: torch.Tensor | None,
        beta: torch.Tensor | None,
        running_mean: torch.Tensor,
        running_var: torch.Tensor,
        decay: Hyper,
        epsilon: Hyper,
    ) -> torch.Tensor:
        n = z.shape[1]
        # Two passes (mean, then the mean of squared deviations), as torch's CPU kernel does;
        # also far faster than var_mean's Welford reduction over a middle dimension.
        mean = z.mean(dim=1, keepdim=True)
        centered = z - mean
        var = (centered * centered).mean(dim=1, keepdim=True)
        rstd = torch.rsqrt(var + member_view(epsilon, 3))
        xhat = centered * rstd
        out = xhat if gamma is None else xhat * gamma.unsqueeze(1)
        if beta is not None:
            out = out + beta.unsqueeze(1)
        with torch.no_grad():
            # torch's update, running = momentum * batch + (1 - momentum) * running, per member.
            momentum = 1.0 - decay
            m2, d2 = member_view(momentum, 2), member_view(1.0 - momentum, 2)
            running_mean.copy_(m2 * mean.squeeze(1) + d2 * running_mean)
            unbiased = var.squeeze(1) * (n / (n - 1))
            running_var.copy_(m2 * unbiased + d2 * running_var)
        ctx.save_for_backward(xhat, rstd, gamma)
        ctx.has_beta = beta is not None
        return out

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (dout,) = grads
        xhat, rstd, gamma = ctx.saved_tensors
        n = xhat.shape[1]
        dgamma = (dout * xhat).sum(dim=1) if gamma is not None else None
        dbeta = dout.sum(dim=1) if ctx.has_beta else None
        dxhat = dout if gamma is None else dout * gamma.unsqueeze(1)
        sum_d = dxhat.sum(dim=1, keepdim=True)
        sum_dx = (dxhat * xhat).sum(dim=1, keepdim=True)
        dz = (dxhat * n - sum_d - xhat * sum_dx) * (rstd / n)
        return dz, dgamma, dbeta, None, None, None, None


def stacked_batch_norm(
    z: torch.Tensor,
    gamma: torch.Tensor | None,
    beta: torch.Tensor | None,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    decay: Hyper,
    epsilon: Hyper,
) -> torch.Tensor:
    """Training-mode BN of ``z`` ``[K, batch, C]``; γ, β, moving averages are ``[K, C]``."""
    if isinstance(decay, float) and isinstance(epsilon, float):
        # Members agree on decay and epsilon: torch's fused kernel over [batch, K * C] channels
        # (the solo engine's exact arithmetic; with K = 1 the reshape is a view, not a copy).
        k, n, c = z.shape
        out = torch.nn.functional.batch_norm(
            z.transpose(0, 1).reshape(n, k * c),
            running_mean.view(-1),
            running_var.view(-1),
            weight=None if gamma is None else gamma.reshape(-1),
            bias=None if beta is None else beta.reshape(-1),
            training=True,
            momentum=1.0 - decay,
            eps=epsilon,
        )
        return out.view(n, k, c).transpose(0, 1)
    result: torch.Tensor = _StackedBatchNorm.apply(  # type: ignore[no-untyped-call]
        z, gamma, beta, running_mean, running_var, decay, epsilon
    )
    return result
