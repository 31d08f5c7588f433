"""The active members of a fused group: stacked model, optimizer, clipping, data, pending rows.

``step_row`` is the fused step itself (forward, backward, clipping, optimizer) returning the
step's ``[K, row width]`` metrics rows on the device (``step_columns.fused_row``); the loop either
appends them to ``rows`` (eager) or lets ``graph_step.StaticStep`` write them into a
preallocated buffer (capturable).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from worker.training.datasets import DataSplits
from worker.training.fused_member import MemberRun
from worker.training.stacked import StackedMLP
from worker.training.stacked_clip import ClipColumns, StackedClipper
from worker.training.stacked_eval import stacked_evaluate, stacked_probe_telemetry
from worker.training.stacked_optim import StackedOptimizer
from worker.training.step_columns import StepOutputs, fused_row
from worker.training.units import probe_telemetry

_Meta = tuple[int, int, float, int, bool]  # step, epoch, wall time, samples, logged


class Group:
    """The active members and their stacked state, in slot order."""

    def __init__(self, runs: list[MemberRun], step: int, device: torch.device) -> None:
        self.runs, self.device = runs, device
        self.model = StackedMLP([r.model for r in runs])
        self.optimizer = StackedOptimizer(
            self.model.parameters(), [r.spec.config.optimizer for r in runs]
        )
        self.optimizer.load_member_states([r.optimizer_state for r in runs], step)
        self._set_clipping()
        # Training data: one copy per distinct split (members with equal seeds share one).
        splits: dict[int, int] = {}
        variants: list[DataSplits] = []
        for r in runs:
            key = id(r.spec.data)
            if key not in splits:
                splits[key] = len(variants)
                variants.append(r.spec.data)
        self.x = torch.stack([torch.from_numpy(d.x_train) for d in variants]).to(device)
        self.y = torch.stack([torch.from_numpy(d.y_train) for d in variants]).to(device)
        self.variant = torch.tensor([splits[id(r.spec.data)] for r in runs], device=device)
        # Each split's probe inputs for the activation percentiles (equal lengths: one dataset).
        # Validation and test splits, stacked like the training data (for stacked_evaluate).
        self.evals = {
            name: (
                torch.stack([torch.from_numpy(getattr(d, f"x_{name}")) for d in variants]).to(
                    device
                ),
                torch.stack([torch.from_numpy(getattr(d, f"y_{name}")) for d in variants]).to(
                    device
                ),
            )
            for name in ("val", "test")
            if len(getattr(variants[0], f"y_{name}"))
        }
        probes = {id(r.spec.data): r.probe for r in runs}
        self.probes = torch.stack([probes[id(d)] for d in variants])
        # Probe telemetry measured every K steps: (step, epoch, wall time, [K, layers, 4]).
        self.pending_act: list[tuple[int, int, float, torch.Tensor]] = []
        self.rows: list[torch.Tensor] = []
        self.meta: list[_Meta] = []

    def _set_clipping(self) -> None:
        clipping = [r.spec.config.clipping for r in self.runs]
        self.clipper = StackedClipper(clipping, self.device)
        self.columns = ClipColumns(clipping, len(self.model.parameters()))

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels ``[K, batch, …]`` of the samples ``idx`` ``[K, batch]``."""
        k, bs = idx.shape
        if self.x.shape[0] > 1:  # rows of the flattened splits: index_select is the fast gather
            idx = idx + (self.variant * self.x.shape[1]).unsqueeze(1)
        flat = idx.reshape(-1)
        x = self.x.view(-1, self.x.shape[2]).index_select(0, flat).view(k, bs, -1)
        return x, self.y.view(-1).index_select(0, flat).view(k, bs)

    @property
    def pending(self) -> int:
        return len(self.meta)

    def deliver(self, rows: torch.Tensor | None = None) -> None:
        """Copy the pending rows (``rows``, else the eager ``self.rows``) to the host in one go
        and give each member its columns."""
        if not self.meta:
            return
        stacked = rows if rows is not None else torch.stack(self.rows)
        values = stacked.to("cpu", torch.float64).numpy()  # [n, K, row width]
        logged = np.array([m[4] for m in self.meta], dtype=bool)
        for slot, run in enumerate(self.runs):
            clipping = run.spec.config.clipping
            cols = {flag: self.columns.member_columns(clipping, flag) for flag in (True, False)}
            mine = values[:, slot, :]
            member_rows: list[torch.Tensor]
            if np.array_equal(cols[True], cols[False]):
                member_rows = list(
                    torch.from_numpy(np.ascontiguousarray(mine[:, cols[True]])).unbind(0)
                )
            else:
                member_rows = [
                    torch.from_numpy(mine[i, cols[bool(f)]]) for i, f in enumerate(logged)
                ]
            lr = run.learning_rate
            run.recorder.record_rows(
                member_rows, [(s, e, w, n, lr, f) for s, e, w, n, f in self.meta]
            )
        self.rows, self.meta = [], []

    def measure_activations(self, step: int, epoch: int) -> None:
        """Every member's probe telemetry now (on the device, no sync)."""
        self.pending_act.append((step, epoch, time.time(), self.percentiles()))

    def percentiles(self) -> torch.Tensor:
        """``[K, n_layers, 4]``: percentiles and inactive-unit fractions of every member."""
        if len(self.runs) == 1:  # the solo engine's own function: exactly its values
            run = self.runs[0]
            return probe_telemetry(run.model, run.probe).unsqueeze(0)
        return stacked_probe_telemetry(self.model, self._per_member(self.probes))

    def hand_out_activations(self, epoch_end: bool) -> None:
        """Give each member its share of the pending (and, at an epoch end, this epoch's)
        percentiles, before the members flush."""
        for s, e, w, values in self.pending_act:
            for slot, run in enumerate(self.runs):
                run.pending_act.append((s, e, w, values[slot]))
        self.pending_act = []
        if epoch_end and len(self.runs) > 1:  # (one member: the solo functions, exactly)
            values = self.percentiles()
            evals: dict[str, list[tuple[float, float]]] = {
                name: stacked_evaluate(self.model, self._per_member(x), self._per_member(y))
                for name, (x, y) in self.evals.items()
            }
            for slot, run in enumerate(self.runs):
                run.epoch_act = values[slot]
                run.epoch_evals = {name: pairs[slot] for name, pairs in evals.items()}

    def _per_member(self, stacked: torch.Tensor) -> torch.Tensor:
        """``stacked`` (one entry per distinct split) as one entry per active member."""
        if stacked.shape[0] == 1:
            return stacked.expand(len(self.runs), *stacked.shape[1:])
        return stacked.index_select(0, self.variant)

    def keep_active(self, perms: torch.Tensor) -> torch.Tensor:
        """Drop stopped members from the stack; return the kept members' permutations."""
        slots = [s for s, r in enumerate(self.runs) if r.status is None]
        if len(slots) == len(self.runs):
            return perms
        self.runs = [self.runs[s] for s in slots]
        if not slots:
            return perms[:0]
        self.model.keep(slots)
        self.optimizer.keep(slots, self.model.parameters())
        self._set_clipping()
        index = torch.tensor(slots, device=self.device)
        self.variant = self.variant.index_select(0, index)
        return perms.index_select(0, index)


def step_row(group: Group, xb: torch.Tensor, yb: torch.Tensor, logged: bool) -> torch.Tensor:
    """One optimizer step of every active member; its metrics row. No host sync."""
    logits = group.model.forward(xb)
    if logits.shape[0] == 1:  # one member: the solo engine's loss op
        losses = F.cross_entropy(logits[0], yb[0]).unsqueeze(0)
    else:
        per_sample = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
        losses = per_sample.view(logits.shape[0], -1).mean(dim=1)
    params = group.model.parameters()
    for p in params:
        p.grad = None
    # A sum, not a mean: each member's gradient is exactly its own loss's gradient.
    losses.sum().backward()  # type: ignore[no-untyped-call]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    stats = group.clipper.clip(grads, measure=logged)
    group.optimizer.step(grads)
    return fused_row(StepOutputs(losses.detach(), logits.detach(), yb), stats)
