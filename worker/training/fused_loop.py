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

import logging
import time
from collections.abc import Sequence

import torch

from worker.training.fused_group import Group, step_row
from worker.training.fused_member import Member, MemberRun, Position
from worker.training.fusion import NotFusableError, check_fusable
from worker.training.graph_step import StaticStep
from worker.training.loop import steps_per_epoch
from worker.training.result import TrainResult

log = logging.getLogger(__name__)


def train_fused(
    members: Sequence[Member],
    *,
    device: torch.device,
    flush_every_s: float = 1.0,
    max_pending_steps: int = 1024,
    static_step: bool | None = None,
) -> list[TrainResult]:
    """Train fusable ``members`` together; one ``TrainResult`` per member, in input order.

    Each member's ``on_metrics``, ``should_stop``, checkpoint and resume behave as in
    ``loop.train`` for that member alone (see there). Resumed members must stand at the same
    step — as they do when their checkpoints were written by one group.

    ``static_step`` (default: on CUDA) runs the step through ``graph_step.StaticStep``, captured
    in a CUDA graph where possible; the summary's ``step_mode`` says how the step ran on CUDA.
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
    group = Group(runs, step, device)
    n_train = group.x.shape[1]
    bs = tcfg.batch_size
    n_steps = steps_per_epoch(n_train, bs, members[0].config.model.batch_norm.enabled)
    if n_steps == 0:
        raise ValueError("the training split is too small for one batch")
    every_k = tcfg.activation_stats_every_steps
    use_static = device.type == "cuda" if static_step is None else static_step
    static: StaticStep | None = None

    def flush(epoch: int, index: int, perms: torch.Tensor, epoch_end: bool) -> torch.Tensor:
        group.deliver(static.take_rows(group.pending) if static is not None else None)
        group.hand_out_activations(epoch_end)
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
        if use_static:
            static = _static_for(static, group, perms, bs, max_pending_steps)
            static.start_epoch(perms, start_index)
        last_flush = time.monotonic()
        for i in range(start_index, epoch_steps):
            due = time.monotonic() - last_flush >= flush_every_s
            if group.pending >= max_pending_steps or due:
                perms = flush(epoch, i, perms, epoch_end=False)
                last_flush = time.monotonic()
                if not group.runs:
                    break
                if static is not None and static.perms.shape[0] != len(group.runs):
                    static = _static_for(None, group, perms, bs, max_pending_steps)
                    static.start_epoch(perms, i)
            lo, hi = i * bs, min((i + 1) * bs, n_train)
            logged = (step + 1) % tcfg.log_every_steps == 0
            if static is None:
                group.rows.append(step_row(group, *group.batch(perms[:, lo:hi]), logged))
            elif hi - lo == bs:
                static.run(logged)
            else:
                static.run_short(lo, hi, logged)
            step += 1
            group.meta.append((step, epoch, time.time(), hi - lo, logged))
            if every_k is not None and step % every_k == 0 and i != epoch_steps - 1:
                group.measure_activations(step, epoch)
        if not group.runs:
            break
        perms = flush(epoch, epoch_steps, perms, epoch_end=True)

    for run in group.runs:
        run.stop("succeeded", step)
    results = [run.result(started) for run in runs]
    if device.type == "cuda":
        # The last step object's mode (a failed capture turns it to "eager: …").
        for result in results:
            result.summary.step_mode = static.mode if static is not None else "eager"
    return results


def _static_for(
    static: StaticStep | None,
    group: Group,
    perms: torch.Tensor,
    batch_size: int,
    capacity: int,
) -> StaticStep:
    """``static`` if it still fits the group, else a new one (the group shrank: recapture)."""
    if static is not None and static.perms.shape[0] == len(group.runs):
        return static
    static = StaticStep(group, perms, batch_size, capacity)
    if static.reason is not None and group.device.type == "cuda":
        log.warning("fused step runs eagerly: %s", static.reason)
    return static
