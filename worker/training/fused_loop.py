"""The fused loop: K members trained as one stacked network, each reported as a solo run.

Same phases, flush and checkpoint rules as ``loop.train``; per step one batched forward and
backward for all active members, the loss *summed* over members (a mean would scale every
member's gradient by 1/K), per-member clipping and optimizer hyperparameters, and one
``[K, width]`` row of metrics on the device. At each flush the rows are copied once and handed
to each member's own ``StepRecorder``/``RunProgress``: every member emits exactly the solo
engine's metrics and summary. A member that diverges or is cancelled stops there and is dropped
from the stack (its model freezes); the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from worker.training.datasets import DataSplits
from worker.training.fused_member import Member, MemberRun, Position
from worker.training.fusion import NotFusableError, check_fusable
from worker.training.loop import steps_per_epoch
from worker.training.result import TrainResult
from worker.training.stacked import StackedMLP
from worker.training.stacked_clip import ClipColumns, StackedClipper
from worker.training.stacked_optim import StackedOptimizer

_Meta = tuple[int, int, float, int, bool]  # step, epoch, wall time, samples, logged


class _Group:
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
        self.rows: list[torch.Tensor] = []
        self.meta: list[_Meta] = []

    def _set_clipping(self) -> None:
        clipping = [r.spec.config.clipping for r in self.runs]
        self.clipper = StackedClipper(clipping, self.device)
        self.columns = ClipColumns(clipping, len(self.model.parameters()))

    def batch(self, perms: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = perms[:, lo:hi]
        if self.x.shape[0] == 1:
            return self.x[0][idx], self.y[0][idx]
        v = self.variant.unsqueeze(1)
        return self.x[v, idx], self.y[v, idx]

    def deliver(self) -> None:
        """Copy the pending rows to the host (one sync) and give each member its columns."""
        if not self.rows:
            return
        values = torch.stack(self.rows).to("cpu", torch.float64).numpy()  # [n, K, width]
        logged = np.array([m[4] for m in self.meta], dtype=bool)
        for slot, run in enumerate(self.runs):
            clipping = run.spec.config.clipping
            cols = {flag: self.columns.member_columns(clipping, flag) for flag in (True, False)}
            mine = values[:, slot, :]
            if np.array_equal(cols[True], cols[False]):
                rows = list(torch.from_numpy(np.ascontiguousarray(mine[:, cols[True]])).unbind(0))
            else:
                rows = [torch.from_numpy(mine[i, cols[bool(f)]]) for i, f in enumerate(logged)]
            lr = run.learning_rate
            run.recorder.record_rows(rows, [(s, e, w, n, lr, f) for s, e, w, n, f in self.meta])
        self.rows, self.meta = [], []

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


def train_fused(
    members: Sequence[Member],
    *,
    device: torch.device,
    flush_every_s: float = 1.0,
    max_pending_steps: int = 1024,
) -> list[TrainResult]:
    """Train fusable ``members`` together; one ``TrainResult`` per member, in input order.

    Each member's ``on_metrics``, ``should_stop``, checkpoint and resume behave as in
    ``loop.train`` for that member alone (see there). Resumed members must stand at the same
    step — as they do when their checkpoints were written by one group.
    """
    check_fusable([m.config for m in members])
    started = time.perf_counter()
    tcfg = members[0].config.training
    runs = [MemberRun(m, device) for m in members]
    positions = {(r.position.step, r.position.epoch, r.position.next_index) for r in runs}
    if len(positions) > 1:
        raise NotFusableError(f"members stand at different steps {sorted(positions)}")
    start = runs[0].position
    step = start.step
    group = _Group(runs, step, device)
    n_train = group.x.shape[1]
    bs = tcfg.batch_size
    n_steps = steps_per_epoch(n_train, bs, members[0].config.model.batch_norm.enabled)
    if n_steps == 0:
        raise ValueError("the training split is too small for one batch")
    every_k = tcfg.activation_stats_every_steps

    def flush(epoch: int, index: int, perms: torch.Tensor, epoch_end: bool) -> torch.Tensor:
        group.deliver()
        elapsed = time.perf_counter() - started
        for slot, run in enumerate(group.runs):
            status = run.run.flush(
                epoch_end=(step, epoch) if epoch_end else None, extra=run.take_act_points()
            )
            if status == "diverged":
                run.stop(status, step)
                continue
            if epoch_end:
                run.epochs_completed += 1 if epoch_steps == n_steps else 0
                position = Position(step, epoch + 1, 0)
                run.checkpoint(position, group.optimizer.member_state(slot), None, elapsed)
            elif status == "cancelled":  # stopped between steps: resumable right here
                position = Position(step, epoch, index)
                run.checkpoint(position, group.optimizer.member_state(slot), perms[slot], elapsed)
            if status == "cancelled":
                run.stop(status, step)
        return group.keep_active(perms)

    for epoch in range(start.epoch, tcfg.epochs + 1):
        if not group.runs or (tcfg.max_steps is not None and step >= tcfg.max_steps):
            break
        start_index = start.next_index if epoch == start.epoch else 0
        epoch_steps = (
            n_steps if tcfg.max_steps is None else min(n_steps, start_index + tcfg.max_steps - step)
        )
        resumed = [r.resumed_perm for r in group.runs]
        if start_index and all(p is not None for p in resumed):
            perms = torch.stack([p for p in resumed if p is not None]).to(device)
        else:
            perms = torch.stack(
                [torch.randperm(n_train, generator=r.shuffle_gen) for r in group.runs]
            ).to(device)
        last_flush = time.monotonic()
        for i in range(start_index, epoch_steps):
            due = time.monotonic() - last_flush >= flush_every_s
            if len(group.rows) >= max_pending_steps or due:
                perms = flush(epoch, i, perms, epoch_end=False)
                last_flush = time.monotonic()
                if not group.runs:
                    break
            perms, step = _step(group, perms, i * bs, (i + 1) * bs, step, epoch), step + 1
            if every_k is not None and step % every_k == 0 and i != epoch_steps - 1:
                for run in group.runs:
                    run.measure_activations(step, epoch)
        if not group.runs:
            break
        perms = flush(epoch, epoch_steps, perms, epoch_end=True)

    for run in group.runs:
        run.stop("succeeded", step)
    return [run.result(started) for run in runs]


def _step(
    group: _Group, perms: torch.Tensor, lo: int, hi: int, step: int, epoch: int
) -> torch.Tensor:
    """One optimizer step of every active member; records its metrics row. No host sync."""
    xb, yb = group.batch(perms, lo, hi)
    logits = group.model.forward(xb)
    if logits.shape[0] == 1:  # one member: the solo engine's loss op
        losses = F.cross_entropy(logits[0], yb[0]).unsqueeze(0)
    else:
        per_sample = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
        losses = per_sample.view(logits.shape[0], -1).mean(dim=1)
    params = group.model.parameters()
    for p in params:
        p.grad = None
    losses.sum().backward()  # type: ignore[no-untyped-call]  # a sum: each member's gradient is its own loss's gradient
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    tcfg = group.runs[0].spec.config.training
    logged = (step + 1) % tcfg.log_every_steps == 0
    stats = group.clipper.clip(grads, measure=logged)
    group.optimizer.step(grads)
    correct = (logits.detach().argmax(dim=2) == yb).sum(dim=1, dtype=logits.dtype)
    group.rows.append(torch.cat([losses.detach().unsqueeze(1), correct.unsqueeze(1), stats], 1))
    group.meta.append((step + 1, epoch, time.time(), xb.shape[1], logged))
    return perms
