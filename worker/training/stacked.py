"""K networks of one architecture as one: every parameter stacked on a leading member axis.

``StackedMLP`` holds leaf tensors ``[K, *solo_shape]`` (a linear weight is ``[K, out, in]``,
exactly K solo weights one after another) and runs the K forwards with batched matmuls. The
member models it was built from stay usable: ``attach`` points their parameters and BN
buffers at views of the stacked tensors, so evaluating, checkpointing or exporting member k is
the solo code on an ordinary ``MLP`` that always shows the stacked values — no copies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from worker.training.model import MLP
from worker.training.stacked_bn import Hyper, member_hyper, stacked_batch_norm


@dataclass
class StackedLayer:
    weight: torch.Tensor  # [K, out, in]
    bias: torch.Tensor | None  # [K, out]
    beta: torch.Tensor | None  # [K, C]
    gamma: torch.Tensor | None  # [K, C]
    running_mean: torch.Tensor | None  # [K, C]
    running_var: torch.Tensor | None
    bn_first: bool
    activation: nn.Module  # stateless, shared by all members

    def parameters(self) -> list[torch.Tensor]:
        """In the solo layer's order: linear weight, bias, BN β, γ."""
        return [p for p in (self.weight, self.bias, self.beta, self.gamma) if p is not None]


class StackedMLP:
    """The members' ``MLP``s stacked (slot s holds ``models[s]``)."""

    def __init__(self, models: Sequence[MLP]) -> None:
        if not models:
            raise ValueError("nothing to stack")
        self.models = list(models)
        self.device = next(models[0].parameters()).device
        self.layers: list[StackedLayer] = []
        for name, layer in models[0].layer_items():
            solo = [m.layer_items()[len(self.layers)][1] for m in models]

            def stack(get: str, solo: Sequence[nn.Module] = solo) -> torch.Tensor | None:
                values = [_get(m, get) for m in solo]
                present = [v.detach() for v in values if v is not None]
                return torch.stack(present) if present else None

            self.layers.append(
                StackedLayer(
                    weight=_leaf(stack("linear.weight")),
                    bias=_leaf_or_none(stack("linear.bias")),
                    beta=_leaf_or_none(stack("bn.beta")),
                    gamma=_leaf_or_none(stack("bn.gamma")),
                    running_mean=stack("bn.running_mean"),
                    running_var=stack("bn.running_var"),
                    bn_first=layer.bn_first,
                    activation=layer.activation,
                )
            )
            del name
        self._set_hypers()
        self.attach()

    @property
    def size(self) -> int:
        return len(self.models)

    def parameters(self) -> list[torch.Tensor]:
        """Stacked leaves in the order of the solo ``MLP.parameters()``."""
        return [p for layer in self.layers for p in layer.parameters()]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training-mode logits ``[K, batch, classes]`` for inputs ``[K, batch, features]``."""
        for layer, decay, eps in zip(self.layers, self._decay, self._epsilon, strict=True):
            z = linear(x, layer.weight, layer.bias)
            if layer.running_mean is not None and layer.bn_first:
                z = self._bn(z, layer, decay, eps)
            x = layer.activation(z)
            if layer.running_mean is not None and not layer.bn_first:
                x = self._bn(x, layer, decay, eps)
        return x

    @staticmethod
    def _bn(z: torch.Tensor, layer: StackedLayer, decay: Hyper, eps: Hyper) -> torch.Tensor:
        assert layer.running_mean is not None and layer.running_var is not None
        return stacked_batch_norm(
            z, layer.gamma, layer.beta, layer.running_mean, layer.running_var, decay, eps
        )

    def attach(self) -> None:
        """Point every member model's parameters and BN buffers at its slot of the stack."""
        for slot, model in enumerate(self.models):
            for (_, solo), layer in zip(model.layer_items(), self.layers, strict=True):
                solo_params = [p for p in solo.parameters()]
                for solo_p, stacked in zip(solo_params, layer.parameters(), strict=True):
                    solo_p.data = stacked.detach()[slot]
                if solo.bn is not None:
                    assert layer.running_mean is not None and layer.running_var is not None
                    solo.bn.running_mean = layer.running_mean[slot]
                    solo.bn.running_var = layer.running_var[slot]

    def keep(self, slots: Sequence[int]) -> None:
        """Keep only ``slots`` (in that order). The dropped members' models are frozen: they
        keep viewing the old tensors, which nothing updates any more."""
        index = torch.tensor(list(slots), dtype=torch.long, device=self.device)
        for layer in self.layers:
            layer.weight = _leaf(layer.weight.detach().index_select(0, index))
            for name in ("bias", "beta", "gamma"):
                value = getattr(layer, name)
                if value is not None:
                    setattr(layer, name, _leaf(value.detach().index_select(0, index)))
            for name in ("running_mean", "running_var"):
                value = getattr(layer, name)
                if value is not None:
                    setattr(layer, name, value.index_select(0, index))
        self.models = [self.models[s] for s in slots]
        self._set_hypers()
        self.attach()

    def _set_hypers(self) -> None:
        # Per layer: each member's BN decay and epsilon (a float when all members agree).
        self._decay: list[Hyper] = []
        self._epsilon: list[Hyper] = []
        for li in range(len(self.layers)):
            bns = [m.layer_items()[li][1].bn for m in self.models]
            decays = [bn.decay if bn is not None else 0.0 for bn in bns]
            epsilons = [bn.epsilon if bn is not None else 0.0 for bn in bns]
            self._decay.append(member_hyper(decays, self.device))
            self._epsilon.append(member_hyper(epsilons, self.device))


class _StackedLinear(torch.autograd.Function):
    """``x @ Wᵀ + b`` per member, with each gradient computed in its parameter's own layout.

    Autograd's ``bmm`` backward of ``x @ weight.transpose(1, 2)`` yields the weight gradient as
    ``xᵀ @ dz`` (``[K, in, out]``) and then copies it, transposed, into the ``[K, out, in]``
    leaf's layout: a full copy of every weight per step (for 784-300-100-10 at K = 32, ~40 MB),
    as costly as the matmul itself. ``dzᵀ @ x`` is that gradient directly.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (dz,) = grads
        x, weight = ctx.saved_tensors
        dx = torch.bmm(dz, weight) if ctx.needs_input_grad[0] else None
        dweight = torch.bmm(dz.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        dbias = dz.sum(dim=1) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return dx, dweight, dbias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    if x.shape[0] == 1:  # one member: the solo engine's addmm, same arithmetic
        return F.linear(x[0], weight[0], None if bias is None else bias[0]).unsqueeze(0)
    result: torch.Tensor = _StackedLinear.apply(x, weight, bias)  # type: ignore[no-untyped-call]
    return result


def _get(module: nn.Module, dotted: str) -> torch.Tensor | None:
    obj: object = module
    for part in dotted.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    assert isinstance(obj, torch.Tensor)
    return obj


def _leaf(t: torch.Tensor | None) -> torch.Tensor:
    assert t is not None
    return t.detach().clone().requires_grad_(True)


def _leaf_or_none(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else _leaf(t)
