"""The seed's fully connected network: ``fully_connected`` layers with an optional BN normalizer."""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from worker.training.batchnorm import TFBatchNorm
from worker.training.config import Activation, Init, ModelConfig

_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "leaky_relu": nn.LeakyReLU,
    "selu": nn.SELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}


class Layer(nn.Module):
    """One ``fully_connected`` layer: linear, then BN and activation in the configured order.

    As in TF1, a linear layer followed directly by BN has no bias: BN's β replaces it.
    """

    def __init__(
        self,
        n_in: int,
        n_out: int,
        activation: Activation,
        bn: TFBatchNorm | None,
        bn_first: bool,
    ) -> None:
        super().__init__()
        self.linear = nn.Linear(n_in, n_out, bias=bn is None or not bn_first)
        self.bn = bn
        self.bn_first = bn_first
        self.activation = _ACTIVATIONS[activation]()

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        """The activation's input (Ioffe & Szegedy's Fig. 1 quantity)."""
        z: torch.Tensor = self.linear(x)
        if self.bn is not None and self.bn_first:
            z = self.bn(z)
        return z

    def from_pre_activation(self, z: torch.Tensor) -> torch.Tensor:
        a: torch.Tensor = self.activation(z)
        if self.bn is not None and not self.bn_first:
            a = self.bn(a)
        return a

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_pre_activation(self.pre_activation(x))


class MLP(nn.Module):
    """hidden1 … hiddenN, outputs — the seed's scope names, used as metric names too."""

    def __init__(self, config: ModelConfig, n_features: int, n_classes: int) -> None:
        super().__init__()
        bn_cfg = config.batch_norm
        bn_first = bn_cfg.placement == "before_activation"

        def make_bn(n: int) -> TFBatchNorm:
            return TFBatchNorm(
                n,
                decay=bn_cfg.decay,
                epsilon=bn_cfg.epsilon,
                center=bn_cfg.center,
                scale=bn_cfg.scale,
            )

        layers: dict[str, Layer] = {}
        n_in = n_features
        for i, width in enumerate(config.hidden_layers, start=1):
            bn = make_bn(width) if bn_cfg.enabled else None
            layers[f"hidden{i}"] = Layer(n_in, width, config.activation, bn, bn_first)
            n_in = width
        out_bn = make_bn(n_classes) if bn_cfg.enabled and bn_cfg.on_output else None
        # The logits have no activation, so BN (if any) always follows the linear map directly.
        layers["outputs"] = Layer(n_in, n_classes, "identity", out_bn, bn_first=True)
        self.layers = nn.ModuleDict(layers)
        init_weights(self, config.init, config.init_std, config.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x

    def layer_items(self) -> list[tuple[str, Layer]]:
        """``(name, layer)`` in forward order, typed (``nn.ModuleDict`` yields plain modules)."""
        return [(name, cast(Layer, layer)) for name, layer in self.layers.items()]

    def bn_layers(self) -> dict[str, TFBatchNorm]:
        return {name: layer.bn for name, layer in self.layer_items() if layer.bn is not None}


def init_weights(model: MLP, init: Init, std: float | None, activation: Activation) -> None:
    """Initialize linear weights (biases to zero), except ``default`` which keeps PyTorch's."""
    if init == "default":
        return
    for _, layer in model.layer_items():
        w = layer.linear.weight
        fan_in = w.shape[1]
        if init == "he_normal":
            nn.init.kaiming_normal_(w, nonlinearity="relu")
        elif init == "he_uniform":
            nn.init.kaiming_uniform_(w, nonlinearity="relu")
        elif init == "xavier_normal":
            nn.init.xavier_normal_(w)
        elif init == "xavier_uniform":
            nn.init.xavier_uniform_(w)
        elif init == "lecun_normal":
            nn.init.normal_(w, 0.0, 1.0 / math.sqrt(fan_in))
        else:  # "normal": the small random Gaussian of Ioffe & Szegedy
            assert std is not None
            nn.init.normal_(w, 0.0, std)
        if layer.linear.bias is not None:
            nn.init.zeros_(layer.linear.bias)
