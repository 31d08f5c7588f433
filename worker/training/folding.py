"""Folding BN into the adjacent linear layers: at prediction time BN is a frozen affine map.

In evaluation mode ``TFBatchNorm`` computes ``y = s·x + t`` per feature, with
``s = γ / √(running_var + ε)`` (γ ≡ 1 without ``scale``) and ``t = β − s·running_mean``
(β ≡ 0 without ``center``). So:

- BN right after a linear map (before the activation, and the logits' BN) folds into that map:
  ``W' = diag(s)·W``, ``b' = s·(b − μ) + β`` — ``torch.nn.utils.fusion.fuse_linear_bn_weights``;
- BN after the activation feeds the *next* linear map, which absorbs it on its input side:
  ``W'' = W·diag(s)``, ``b'' = b + W·t`` — the case torch's fusion helpers do not cover.

The result is a plain ``MLP`` without BN (every linear with a bias) that predicts as the original
does in evaluation mode. The arithmetic is done in float64 and rounded once into the model's dtype.
"""

from __future__ import annotations

import torch
from torch.nn.utils.fusion import fuse_linear_bn_weights

from worker.training.batchnorm import TFBatchNorm
from worker.training.config import ModelConfig
from worker.training.model import MLP


def without_batch_norm(config: ModelConfig) -> ModelConfig:
    """The same widths, activation and initializer, with BN off (so every linear has a bias)."""
    bn = config.batch_norm.model_copy(update={"enabled": False})
    return config.model_copy(update={"batch_norm": bn})


def plain_copy(config: ModelConfig, n_features: int, n_classes: int) -> MLP:
    """A freshly initialized BN-free ``MLP`` of the same shape, built without moving the caller's
    random stream (it is made at the end of a run, and a run is reproducible from its seed)."""
    with torch.random.fork_rng(devices=[]):
        return MLP(without_batch_norm(config), n_features, n_classes)


def bn_affine(bn: TFBatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s, t)`` in float64 with ``bn(x) == s * x + t`` in evaluation mode."""
    scale = torch.rsqrt(bn.running_var.double() + bn.epsilon)
    if bn.gamma is not None:
        scale = scale * bn.gamma.double()
    shift = -scale * bn.running_mean.double()
    if bn.beta is not None:
        shift = shift + bn.beta.double()
    return scale, shift


@torch.no_grad()
def fold_batch_norm(model: MLP, config: ModelConfig) -> MLP:
    """A BN-free ``MLP`` in evaluation mode, on ``model``'s device and dtype, whose predictions
    equal ``model``'s in evaluation mode (up to float rounding). ``config`` is the model's own."""
    layers = model.layer_items()
    weight = layers[0][1].linear.weight
    folded = plain_copy(config, weight.shape[1], layers[-1][1].linear.out_features)
    folded = folded.to(device=weight.device, dtype=weight.dtype).eval()
    carried: tuple[torch.Tensor, torch.Tensor] | None = None  # a BN after the last activation
    for (_, layer), (_, target) in zip(layers, folded.layer_items(), strict=True):
        w = layer.linear.weight.double()
        b = (
            layer.linear.bias.double()
            if layer.linear.bias is not None
            else torch.zeros(w.shape[0], dtype=torch.float64, device=w.device)
        )
        if carried is not None:  # this layer's input is s·a + t: W(s·a + t) + b
            scale, shift = carried
            w, b = w * scale, b + w @ shift
            carried = None
        bn = layer.bn
        if bn is not None and layer.bn_first:
            ones = torch.ones_like(b)
            w, b = fuse_linear_bn_weights(
                w,
                b,
                bn.running_mean.double(),
                bn.running_var.double(),
                bn.epsilon,
                bn.gamma.double() if bn.gamma is not None else ones,
                bn.beta.double() if bn.beta is not None else torch.zeros_like(ones),
            )
        elif bn is not None:
            carried = bn_affine(bn)
        assert target.linear.bias is not None
        target.linear.weight.copy_(w)
        target.linear.bias.copy_(b)
    # The logits' BN, if any, always follows the linear map: nothing is left to carry.
    assert carried is None
    return folded
