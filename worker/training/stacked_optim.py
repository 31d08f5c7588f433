"""The solo engine's optimizers (torch SGD, Adam, RMSprop) applied to stacked members at once.

Every member keeps its own learning rate, momentum and weight decay: a hyperparameter shared by
all members is a Python float and takes torch's own op (``add_(g, alpha=-lr)``, the exact
arithmetic of the solo step); one that varies is a ``[K]`` tensor broadcast over the member
axis. The update rules are those of torch's single-tensor implementations (the CPU default).
State lives in torch's per-parameter layout with the member axis in front, so a member's state
converts to and from a solo optimizer's ``state_dict()`` (checkpoints stay solo checkpoints).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from worker.training.config import OptimizerConfig
from worker.training.stacked_bn import Hyper, member_hyper, member_view

# torch's defaults, which the solo engine uses: Adam betas and eps; RMSprop alpha and eps.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
RMSPROP_ALPHA = 0.99
RMSPROP_EPS = 1e-8


def _scale(t: torch.Tensor, value: Hyper) -> torch.Tensor:
    """``t * value`` per member (new tensor)."""
    return t * member_view(value, t.dim())


def _buffer(buffers: list[torch.Tensor | None], i: int, like: torch.Tensor) -> torch.Tensor:
    """``buffers[i]``, created as zeros the first time (as torch does)."""
    buf = buffers[i]
    if buf is None:
        buf = buffers[i] = torch.zeros_like(like)
    return buf


class StackedOptimizer:
    def __init__(self, params: list[torch.Tensor], configs: Sequence[OptimizerConfig]) -> None:
        self.kind = configs[0].name
        self.nesterov = configs[0].nesterov
        self.params = params
        self.configs = list(configs)
        self.steps = 0  # optimizer steps taken (the same for every member)
        # key -> one stacked tensor per parameter (None before it exists, as in torch)
        self.state: dict[str, list[torch.Tensor | None]] = {}
        self._set_hypers()

    def _set_hypers(self) -> None:
        device = self.params[0].device
        self.lr = member_hyper([c.learning_rate for c in self.configs], device)
        self.momentum = member_hyper([c.momentum for c in self.configs], device)
        self.weight_decay = member_hyper([c.weight_decay for c in self.configs], device)
        self.neg_lr = -self.lr
        # Decided here, once: reading a device tensor inside the step would be a host sync.
        self.use_momentum = self._any(self.momentum)
        self.use_weight_decay = self._any(self.weight_decay)

    def _buffers(self) -> list[str]:
        """State keys a solo optimizer of this kind keeps (per member: see ``member_state``)."""
        if self.kind in ("sgd", "momentum"):
            return ["momentum_buffer"] if self.use_momentum else []
        if self.kind == "adam":
            return ["exp_avg", "exp_avg_sq"]
        return ["square_avg", *(["momentum_buffer"] if self.use_momentum else [])]

    @staticmethod
    def _any(value: Hyper) -> bool:
        return bool(value != 0.0) if isinstance(value, float) else bool((value != 0).any())

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor]) -> None:
        self.steps += 1
        if self.use_weight_decay:
            wd = self.weight_decay
            if isinstance(wd, float):
                grads = [g.add(p, alpha=wd) for g, p in zip(grads, self.params, strict=True)]
            else:
                grads = [g + _scale(p, wd) for g, p in zip(grads, self.params, strict=True)]
        if self.kind in ("sgd", "momentum"):
            self._sgd(grads)
        elif self.kind == "adam":
            self._adam(grads)
        else:
            self._rmsprop(grads)

    def _update(self, p: torch.Tensor, direction: torch.Tensor) -> None:
        """``p -= lr * direction``."""
        if isinstance(self.lr, float):
            p.add_(direction, alpha=-self.lr)
        else:
            p.add_(_scale(direction, self.neg_lr))

    def _sgd(self, grads: list[torch.Tensor]) -> None:
        use_buffer = self.use_momentum
        bufs = self.state.setdefault("momentum_buffer", [None] * len(grads)) if use_buffer else []
        m = self.momentum
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            if use_buffer:
                buf = bufs[i]
                if buf is None:
                    buf = bufs[i] = g.detach().clone()
                else:
                    # (a member with momentum 0 gets buf = 0 * buf + g = g, as without a buffer)
                    buf.mul_(member_view(m, buf.dim())).add_(g)
                if self.nesterov:
                    g = g.add(buf, alpha=m) if isinstance(m, float) else g + _scale(buf, m)
                else:
                    g = buf
            self._update(p, g)

    def _adam(self, grads: list[torch.Tensor]) -> None:
        beta1, beta2 = ADAM_BETAS
        avgs = self.state.setdefault("exp_avg", [None] * len(grads))
        sqs = self.state.setdefault("exp_avg_sq", [None] * len(grads))
        bias_correction1 = 1 - beta1**self.steps
        bias_correction2_sqrt = (1 - beta2**self.steps) ** 0.5
        lr = self.lr
        neg_step = -lr / bias_correction1
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            avg, sq = _buffer(avgs, i, p), _buffer(sqs, i, p)
            avg.lerp_(g, 1 - beta1)
            sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (sq.sqrt() / bias_correction2_sqrt).add_(ADAM_EPS)
            if isinstance(neg_step, float):
                p.addcdiv_(avg, denom, value=neg_step)
            else:
                p.add_(_scale(avg / denom, neg_step))

    def _rmsprop(self, grads: list[torch.Tensor]) -> None:
        sqs = self.state.setdefault("square_avg", [None] * len(grads))
        use_buffer = self.use_momentum
        bufs = self.state.setdefault("momentum_buffer", [None] * len(grads)) if use_buffer else []
        m = self.momentum
        for i, (p, g) in enumerate(zip(self.params, grads, strict=True)):
            sq = _buffer(sqs, i, p)
            sq.mul_(RMSPROP_ALPHA).addcmul_(g, g, value=1 - RMSPROP_ALPHA)
            avg = sq.sqrt().add_(RMSPROP_EPS)
            if use_buffer:
                buf = _buffer(bufs, i, p)
                buf.mul_(member_view(m, buf.dim())).addcdiv_(g, avg)
                self._update(p, buf)
            elif isinstance(self.lr, float):
                p.addcdiv_(g, avg, value=-self.lr)
            else:
                p.add_(_scale(g / avg, self.neg_lr))

    # ---- conversion to and from the solo optimizers' state_dict()["state"]

    def member_state(self, slot: int) -> dict[int, dict[str, Any]]:
        """Member ``slot``'s state as torch's solo optimizer keeps it (views, not copies)."""
        if self.steps == 0:
            return {}
        config = self.configs[slot]
        keys = [k for k in self._buffers() if k in self.state]
        if "momentum_buffer" in keys and config.momentum == 0.0:
            keys.remove("momentum_buffer")  # torch keeps no buffer for a member without momentum
        out: dict[int, dict[str, Any]] = {}
        for i in range(len(self.params)):
            entry: dict[str, Any] = {}
            for key in keys:
                stacked = self.state[key][i]
                if stacked is not None:
                    entry[key] = stacked[slot]
            if self.kind in ("adam", "rmsprop"):
                entry["step"] = torch.tensor(float(self.steps))
            if entry:
                out[i] = entry
        return out

    def load_member_states(self, states: Sequence[dict[Any, dict[str, Any]]], steps: int) -> None:
        """Stack solo states (one per member, as ``member_state`` gives them) after ``steps``."""
        self.steps = steps
        self.state = {}
        if steps == 0:
            return
        for key in self._buffers():
            per_param: list[torch.Tensor | None] = []
            for i, p in enumerate(self.params):
                rows = []
                for slot, state in enumerate(states):
                    entry = state.get(i, state.get(str(i), {}))
                    value = entry.get(key)
                    if value is None:  # e.g. a momentum buffer of a member without momentum
                        value = torch.zeros_like(p[slot])
                    rows.append(value.to(p.device, p.dtype))
                per_param.append(torch.stack(rows))
            self.state[key] = per_param

    def keep(self, slots: Sequence[int], params: list[torch.Tensor]) -> None:
        """Keep only the members in ``slots``; ``params`` are the new stacked leaves."""
        index = torch.tensor(list(slots), dtype=torch.long, device=params[0].device)
        self.params = params
        self.configs = [self.configs[s] for s in slots]
        for key, tensors in self.state.items():
            self.state[key] = [None if t is None else t.index_select(0, index) for t in tensors]
        self._set_hypers()
