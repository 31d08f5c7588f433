"""The training loop: one pure function, config + data in, metrics out (nanoGPT-style).

Phases: setup → (per epoch: shuffle → steps → flush with evaluation → checkpoint) → summary.
The hot loop never reads a device value: each step appends one row of 0-d tensors to the
``StepRecorder``; ``_Run.flush`` copies everything pending once, checks it for divergence, and
hands the metric points to ``on_metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from worker.training.checkpoint import TrainingState, load_training_state, save_checkpoint
from worker.training.clipping import clip_gradients
from worker.training.collapse import CollapseWatch, evaluated_labels, majority_share
from worker.training.config import ExperimentConfig, OptimizerConfig
from worker.training.datasets import DataSplits
from worker.training.evaluation import epoch_points, evaluate, probe_inputs
from worker.training.model import MLP
from worker.training.prediction_cost import measure_prediction_cost
from worker.training.progress import OnMetrics, RunProgress, _Evaluated
from worker.training.recorder import StepRecorder
from worker.training.result import MetricPoint, TrainResult, TrainStatus
from worker.training.step_columns import StepOutputs
from worker.training.units import probe_points, probe_telemetry


def build_optimizer(model: torch.nn.Module, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.name in ("sgd", "momentum"):
        return torch.optim.SGD(
            params,
            lr=cfg.learning_rate,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov,
            weight_decay=cfg.weight_decay,
        )
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(
        params, lr=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )


def steps_per_epoch(n_train: int, batch_size: int, batch_norm: bool) -> int:
    full, rest = divmod(n_train, batch_size)
    # BN cannot normalize a batch of one sample (zero variance): drop such a trailing batch.
    return full + (1 if rest > 1 or (rest == 1 and not batch_norm) else 0)


def train(
    config: ExperimentConfig,
    data: DataSplits,
    *,
    device: torch.device,
    on_metrics: OnMetrics,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_path: Path | None = None,
    resume_from: Path | None = None,
    before_checkpoint: Callable[[], None] = lambda: None,
    flush_every_s: float = 1.0,
    max_pending_steps: int = 1024,
) -> TrainResult:
    """Train ``config`` on ``data``; report metrics through ``on_metrics`` in step-complete batches.

    A flush happens every ``flush_every_s`` seconds or ``max_pending_steps`` steps, and at the
    end of every epoch (with that epoch's evaluation). Every call of ``on_metrics`` holds *all*
    points of each step it mentions, so a reader paging by step never sees half a step.
    ``should_stop`` is polled after each flush; a stop is status "cancelled" (the caller knows
    why). A checkpoint is written at every epoch end and at a stop, after ``before_checkpoint``
    (the caller's barrier: stored metrics must never lag behind a checkpoint); ``resume_from``
    continues from one exactly. Same seed + same device → identical metrics, resumed or not.
    """
    started = time.perf_counter()
    tcfg = config.training

    # ---- setup: everything seeded from the config, data moved to the device once
    torch.manual_seed(tcfg.seed)
    model = MLP(config.model, data.n_features, data.n_classes).to(device)
    optimizer = build_optimizer(model, config.optimizer)
    params = [p for p in model.parameters() if p.requires_grad]
    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    shuffle_gen = torch.Generator().manual_seed(tcfg.seed)
    n_train = x_train.shape[0]
    bs = tcfg.batch_size
    n_steps = steps_per_epoch(n_train, bs, config.model.batch_norm.enabled)
    if n_steps == 0:
        raise ValueError("the training split is too small for one batch")

    # grad_norm/<layer> covers the layer's linear weight and bias (BN's β/γ count only globally).
    index = {id(p): i for i, p in enumerate(params)}
    layers = model.layer_items()
    recorder = StepRecorder(
        [name for name, _ in layers],
        [[index[id(p)] for p in layer.linear.parameters()] for _, layer in layers],
        [p.numel() for p in params],
        config.clipping,
    )

    probe = torch.from_numpy(probe_inputs(data)).to(device)
    every_k = tcfg.activation_stats_every_steps
    pending_act: list[tuple[int, int, float, torch.Tensor]] = []  # step, epoch, time, [L, 4]

    def epoch_metrics(train_stats: tuple[float, float], at_step: int, epoch: int) -> _Evaluated:
        # The seed's is_training=False: validation and test use the moving averages.
        evals = evaluate(model, data, device)
        act = probe_telemetry(model, probe).cpu().numpy()
        return evals, [
            *epoch_points(model, evals, train_stats, at_step, epoch),
            *probe_points(model, act, at_step, epoch, time.time()),
        ]

    def take_act_points() -> list[MetricPoint]:
        """Probe telemetry measured every K steps, copied to the host in one go (a sync point)."""
        if not pending_act:
            return []
        values = torch.stack([t for *_, t in pending_act]).cpu().numpy()
        points = [
            p
            for (s, e, w, _), v in zip(pending_act, values, strict=True)
            for p in probe_points(model, v, s, e, w)
        ]
        pending_act.clear()
        return points

    watch = CollapseWatch(data.n_classes, majority_share(evaluated_labels(data)))
    run = RunProgress(recorder, watch.wrap(on_metrics), should_stop, epoch_metrics)
    step = epochs_completed = 0
    first_epoch, first_index, resumed_perm, earlier_s = 1, 0, None, 0.0
    if resume_from is not None:
        state = load_training_state(resume_from, model)
        optimizer.load_state_dict(state.optimizer)
        shuffle_gen.set_state(state.shuffle_rng)
        run.load_state_dict(state.progress)
        if "collapse" in state.progress:  # absent in checkpoints written before it existed
            watch.load_state_dict(state.progress["collapse"])
        step, epochs_completed = state.step, state.epochs_completed
        first_epoch, first_index, earlier_s = state.epoch, state.next_index, state.elapsed_s
        resumed_perm = state.perm

    def checkpoint(epoch: int, next_index: int, perm: torch.Tensor | None) -> None:
        if checkpoint_path is None:
            return
        before_checkpoint()
        save_checkpoint(
            checkpoint_path,
            model,
            config,
            TrainingState(
                step=step,
                epoch=epoch,
                next_index=next_index,
                epochs_completed=epochs_completed,
                elapsed_s=earlier_s + time.perf_counter() - started,
                progress={**run.state_dict(), "collapse": watch.state_dict()},
                optimizer=optimizer.state_dict(),
                shuffle_rng=shuffle_gen.get_state(),
                perm=perm,
            ),
            standardization=data.standardization(),
        )

    status: TrainStatus = "succeeded"
    for epoch in range(first_epoch, tcfg.epochs + 1):
        if tcfg.max_steps is not None and step >= tcfg.max_steps:
            break
        start_index = first_index if epoch == first_epoch else 0
        epoch_steps = (
            n_steps if tcfg.max_steps is None else min(n_steps, start_index + tcfg.max_steps - step)
        )
        model.train()
        if start_index and resumed_perm is not None:
            perm = resumed_perm.to(device)  # continue the interrupted epoch's order
        else:
            perm = torch.randperm(n_train, generator=shuffle_gen).to(device)
        last_flush = time.monotonic()
        for i in range(start_index, epoch_steps):
            # Flush *before* a step, never after one: the epoch's last step is flushed together
            # with the epoch's metrics.
            if len(recorder) >= max_pending_steps or time.monotonic() - last_flush >= flush_every_s:
                status = run.flush(extra=take_act_points())
                last_flush = time.monotonic()
                if status == "cancelled":
                    checkpoint(epoch, i, perm)  # stopped between steps: resumable right here
                if status != "succeeded":
                    break

            # ---- forward / backward
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x_train[idx], y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)  # loss.backward(), which is unannotated
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

            # ---- clip and measure (on the device), update, record
            step += 1
            logged = step % tcfg.log_every_steps == 0
            stats = clip_gradients(grads, config.clipping, measure=logged)
            optimizer.step()
            lr = float(optimizer.param_groups[0]["lr"])
            outputs = StepOutputs(loss.detach(), logits.detach(), yb)
            recorder.record(step, epoch, len(idx), lr, outputs, stats, logged=logged)
            # (The epoch's last step gets its percentiles with the epoch's evaluation.)
            if every_k is not None and step % every_k == 0 and i != epoch_steps - 1:
                pending_act.append((step, epoch, time.time(), probe_telemetry(model, probe)))
        if status != "succeeded":
            break

        # ---- epoch end: evaluate (in the same flush as the last step), then checkpoint
        status = run.flush(epoch_end=(step, epoch), extra=take_act_points())
        if status == "diverged":
            break
        epochs_completed += 1 if epoch_steps == n_steps else 0
        checkpoint(epoch + 1, 0, None)
        if status == "cancelled":
            break

    duration = earlier_s + time.perf_counter() - started
    summary = run.summary(status, step, epochs_completed, duration)
    extra = watch.summary_fields(status)
    if tcfg.measure_prediction_cost and status != "cancelled":  # a stop should stop promptly
        extra["prediction_cost"] = measure_prediction_cost(model, config.model)
    return TrainResult(
        summary=summary.model_copy(update=extra),
        device=str(device),
        checkpoint_written=checkpoint_path is not None and checkpoint_path.is_file(),
    )
