"""Batch normalization with the exact parameterization of TF1 ``tf.contrib.layers.batch_norm``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TFBatchNorm(nn.Module):
    """BN over features of a 2-D input, parameterized like the seed's TF1 ``batch_norm``.

    - ``center`` gives a learnable shift β; ``scale`` a learnable γ. With ``scale=False`` (TF's
      default) γ is fixed at 1 and is *not* a parameter, which ``nn.BatchNorm1d(affine=...)``
      cannot express because it couples γ and β.
    - ``decay`` is TF's: ``running = decay * running + (1 - decay) * batch``; torch's momentum is
      ``1 - decay``.
    - Training normalizes with the biased mini-batch variance (as TF does). The stored running
      variance is torch's *unbiased* estimate (n/(n-1) times TF's legacy biased one): we keep the
      fused ``F.batch_norm`` kernel rather than re-implementing the update by hand; the factor is
      1.02 at batch 50 and vanishes for larger batches. See docs/engine.md.
    """

    def __init__(
        self,
        num_features: int,
        *,
        decay: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = False,
    ) -> None:
        super().__init__()
        self.num_features = num_features
        self.decay = decay
        self.epsilon = epsilon
        self.beta = nn.Parameter(torch.zeros(num_features)) if center else None
        self.gamma = nn.Parameter(torch.ones(num_features)) if scale else None
        self.running_mean: torch.Tensor
        self.running_var: torch.Tensor
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # is_training in the seed == self.training here: batch statistics (and a moving-average
        # update) while training, the moving averages at evaluation.
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            weight=self.gamma,
            bias=self.beta,
            training=self.training,
            momentum=1.0 - self.decay,
            eps=self.epsilon,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, decay={self.decay}, epsilon={self.epsilon}, "
            f"center={self.beta is not None}, scale={self.gamma is not None}"
        )
