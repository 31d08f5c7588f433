"""Per-member gradient clipping of stacked gradients, measured on the device.

Members may mix clipping modes and thresholds; a norm never mixes members. One step yields one
``[K, width]`` block of columns ``[norms(P), coef?, norms_after(P)?, sqrt_clipped(P)?]`` —
the union of what the solo ``ClipStats`` holds for the modes present — and
``ClipColumns.member_columns`` picks, per member, the columns its solo ``StepRecorder`` expects,
so decoding and reporting are the solo engine's own code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from worker.training.clipping import NORM_EPS
from worker.training.config import ClippingConfig
from worker.training.stacked_bn import member_hyper, member_view
from worker.training.step_columns import device_columns


class ClipColumns:
    """The column layout of a group's clipping statistics (after the device columns)."""

    def __init__(self, configs: Sequence[ClippingConfig], n_params: int) -> None:
        self.configs = list(configs)
        self.p = n_params
        modes = {c.mode for c in configs}
        self.has_norm = "norm" in modes
        self.has_value = "value" in modes
        extra = (1 if self.has_norm else 0) + (2 * n_params if self.has_value else 0)
        self.width = n_params + extra

    def member_columns(self, config: ClippingConfig, measured: bool) -> np.ndarray:
        """Indices (into a full row: the device columns, then this block) of a solo
        recorder's row."""
        p, d = self.p, len(device_columns())
        head = list(range(d + p))  # the device columns and the per-parameter norms
        if config.mode == "norm":
            return np.array([*head, d + p])
        if config.mode == "value" and measured:
            after = d + p + (1 if self.has_norm else 0)
            return np.array([*head, *range(after, after + 2 * p)])
        return np.array(head)


class StackedClipper:
    def __init__(self, configs: Sequence[ClippingConfig], device: torch.device) -> None:
        self.configs = list(configs)
        k = len(configs)
        self.norm_mask = torch.tensor([c.mode == "norm" for c in configs], device=device)
        self.all_norm = all(c.mode == "norm" for c in configs)
        self.all_value = all(c.mode == "value" for c in configs)
        self.has_norm = bool(self.norm_mask.any())
        self.has_value = any(c.mode == "value" for c in configs)
        inf = float("inf")
        # A member outside a mode gets an infinite threshold there: no effect.
        self.norm_threshold = member_hyper(
            [c.threshold if c.mode == "norm" else inf for c in configs], device
        )
        self.value_threshold = member_hyper(
            [c.threshold if c.mode == "value" else inf for c in configs], device
        )
        self.k = k

    def clip(self, grads: list[torch.Tensor], *, measure: bool) -> torch.Tensor:
        """Clip ``grads`` (stacked, in place); return the ``[K, width]`` statistics block."""
        norms = _member_norms(grads)  # [K, P]
        cols = [norms]
        if self.has_norm:
            total = torch.linalg.vector_norm(norms, dim=1)
            coef = torch.clamp(self.norm_threshold / (total + NORM_EPS), max=1.0)
            if not self.all_norm:
                coef = torch.where(self.norm_mask, coef, torch.ones_like(coef))
            torch._foreach_mul_(grads, [coef.view(-1, *([1] * (g.dim() - 1))) for g in grads])
            cols.append(coef.unsqueeze(1))
        if self.has_value:
            t = self.value_threshold
            if measure:
                over = [
                    (g.abs() > member_view(t, g.dim())).flatten(1).sum(dim=1, dtype=g.dtype)
                    for g in grads
                ]
            if isinstance(t, float):
                torch._foreach_clamp_min_(grads, -t)
                torch._foreach_clamp_max_(grads, t)
            else:
                for g in grads:
                    bound = member_view(t, g.dim())
                    assert isinstance(bound, torch.Tensor)
                    torch.clamp(g, min=-bound, max=bound, out=g)
            if measure:
                cols += [_member_norms(grads), torch.stack(over, dim=1).sqrt()]
            else:  # unmeasured rows keep the width; ``member_columns`` never reads these
                cols.append(norms.new_zeros(norms.shape[0], 2 * norms.shape[1]))
        return torch.cat(cols, dim=1)


def _member_norms(grads: list[torch.Tensor]) -> torch.Tensor:
    """``[K, P]``: each member's L2 norm of each parameter's gradient."""
    if grads[0].shape[0] == 1:  # one member: the solo engine's _foreach_norm
        return torch.stack(torch._foreach_norm(grads)).unsqueeze(0)
    return torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1)
