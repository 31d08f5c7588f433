"""The training loop: one pure function, config + data in, metrics out (nanoGPT-style).

Phases: setup → (per epoch: shuffle → steps → flush with evaluation → checkpoint) → summary.
The hot loop never reads a device value: each step appends one row of 0-d tensors to the
``StepRecorder``; ``_Run.flush`` copies everything pending once, checks it for divergence, and
hands the metric points to ``on_metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from worker.training.checkpoint import save_checkpoint
from worker.training.clipping import clip_gradients
from worker.training.config import ExperimentConfig, OptimizerConfig
from worker.training.datasets import DataSplits
from worker.training.evaluation import epoch_points, evaluate
from worker.training.model import MLP
from worker.training.recorder import StepBlock, StepRecorder
from worker.training.result import MetricPoint, TrainResult, TrainStatus, TrainSummary

OnMetrics = Callable[[Sequence[MetricPoint]], None]
_Evaluated = tuple[dict[str, tuple[float, float]], list[MetricPoint]]
EpochMetrics = Callable[[tuple[float, float], int, int], _Evaluated]


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
    flush_every_s: float = 1.0,
    max_pending_steps: int = 1024,
) -> TrainResult:
    """Train ``config`` on ``data``; report metrics through ``on_metrics`` in step-complete batches.

    A flush happens every ``flush_every_s`` seconds or ``max_pending_steps`` steps, and at the
    end of every epoch (with that epoch's evaluation). Every call of ``on_metrics`` holds *all*
    points of each step it mentions, so a reader paging by step never sees half a step.
    ``should_stop`` is polled after each flush (cancellation). Same seed + same device →
    identical metrics.
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

    def epoch_metrics(train_stats: tuple[float, float], at_step: int, epoch: int) -> _Evaluated:
        # The seed's is_training=False: validation and test use the moving averages.
        evals = evaluate(model, data, device)
        return evals, epoch_points(model, evals, train_stats, at_step, epoch)

    run = _Run(recorder, on_metrics, should_stop, epoch_metrics)
    step = epochs_completed = 0
    checkpoint_written = False
    status: TrainStatus = "succeeded"

    for epoch in range(1, tcfg.epochs + 1):
        if tcfg.max_steps is not None and step >= tcfg.max_steps:
            break
        epoch_steps = n_steps if tcfg.max_steps is None else min(n_steps, tcfg.max_steps - step)
        model.train()
        perm = torch.randperm(n_train, generator=shuffle_gen).to(device)
        last_flush = time.monotonic()
        for i in range(epoch_steps):
            # Flush *before* a step, never after one: the epoch's last step is flushed together
            # with the epoch's metrics.
            if len(recorder) >= max_pending_steps or time.monotonic() - last_flush >= flush_every_s:
                status = run.flush()
                last_flush = time.monotonic()
                if status != "succeeded":
                    break

            # ---- forward / backward
            idx = perm[i * bs : (i + 1) * bs]
            xb, yb = x_train[idx], y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]

            # ---- clip and measure (on the device), update, record
            step += 1
            logged = step % tcfg.log_every_steps == 0
            stats = clip_gradients(grads, config.clipping, measure=logged)
            optimizer.step()
            correct = (logits.detach().argmax(dim=1) == yb).sum(dtype=logits.dtype)
            lr = float(optimizer.param_groups[0]["lr"])
            recorder.record(step, epoch, len(idx), lr, loss.detach(), correct, stats, logged=logged)
        if status != "succeeded":
            break

        status = run.flush(epoch_end=(step, epoch))
        if status == "diverged":
            break
        epochs_completed += 1 if epoch_steps == n_steps else 0
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, config)
            checkpoint_written = True
        if status == "cancelled":
            break

    duration = time.perf_counter() - started
    return TrainResult(
        summary=run.summary(status, step, epochs_completed, duration),
        device=str(device),
        checkpoint_written=checkpoint_written,
    )


class _Run:
    """What the loop learns at each flush: divergence, training sums, evaluations, telemetry."""

    def __init__(
        self,
        recorder: StepRecorder,
        sink: OnMetrics,
        should_stop: Callable[[], bool],
        epoch_metrics: EpochMetrics,
    ) -> None:
        self.recorder, self.sink, self.should_stop = recorder, sink, should_stop
        self.epoch_metrics = epoch_metrics
        self.divergence: tuple[int, str] | None = None  # step, metric
        self.samples = 0  # trained samples, over the whole run
        self.best_val: float | None = None
        self.last_test: float | None = None
        self.last_loss: float | None = None
        # This epoch's running sums of mini-batch loss x samples, correct and samples.
        self._epoch = [0.0, 0.0, 0]
        # Clipping telemetry over logged steps; the largest gradient norm over all steps.
        self.logged_steps = self.clipped_steps = 0
        self.clip_fraction_sum = 0.0
        self.max_norm: tuple[float, int] | None = None

    def flush(self, epoch_end: tuple[int, int] | None = None) -> TrainStatus:
        """Drain the recorder and emit its points; at an epoch end (``(step, epoch)``) evaluate
        and emit the epoch's points in the same batch; then poll ``should_stop``.

        On divergence, the steps up to and including the first non-finite one are emitted (the
        diverging step is reported even when it is not a logged step: its ``loss`` and
        ``grad_norm``), the rest are dropped, and no epoch metrics are computed.
        """
        block = self.recorder.drain()
        bad = block.first_non_finite()
        if bad is not None:
            block = block.head(bad + 1)
        self._note_steps(block)
        points = self.recorder.points(block)
        if bad is not None:
            step, epoch, wall = int(block.step[bad]), int(block.epoch[bad]), block.wall_time[bad]
            loss, norm = float(block.loss[bad]), float(block.grad_norm[bad])
            self.divergence = (step, "loss" if not np.isfinite(loss) else "grad_norm")
            self.last_loss = loss
            if not block.logged[bad]:
                points += [
                    MetricPoint("loss", step, epoch, loss, float(wall)),
                    MetricPoint("grad_norm", step, epoch, norm, float(wall)),
                ]
        elif epoch_end is not None:
            loss_sum, correct, seen = self._epoch
            self._epoch = [0.0, 0.0, 0]
            self.last_loss = loss_sum / seen
            evals, epoch_points = self.epoch_metrics((loss_sum / seen, correct / seen), *epoch_end)
            self._note_evaluation(evals)
            points += epoch_points
        if points:
            self.sink(points)
        if bad is not None:
            return "diverged"
        return "cancelled" if self.should_stop() else "succeeded"

    def _note_steps(self, block: StepBlock) -> None:
        if not len(block):
            return
        self._epoch[0] += float(np.dot(block.loss, block.samples))
        self._epoch[1] += float(block.correct.sum())
        self._epoch[2] += int(block.samples.sum())
        self.samples += int(block.samples.sum())
        fractions = block.clip_fraction[block.logged]
        self.logged_steps += len(fractions)
        self.clipped_steps += int((fractions > 0).sum())
        self.clip_fraction_sum += float(np.nansum(fractions))
        norms = np.where(np.isfinite(block.grad_norm), block.grad_norm, -np.inf)
        k = int(np.argmax(norms))
        if np.isfinite(norms[k]) and (self.max_norm is None or norms[k] > self.max_norm[0]):
            self.max_norm = (float(norms[k]), int(block.step[k]))

    def _note_evaluation(self, evals: dict[str, tuple[float, float]]) -> None:
        if "val" in evals:
            acc = evals["val"][1]
            self.best_val = acc if self.best_val is None else max(self.best_val, acc)
        if "test" in evals:
            self.last_test = evals["test"][1]

    def summary(
        self, status: TrainStatus, steps: int, epochs: int, duration: float
    ) -> TrainSummary:
        div = self.divergence
        return TrainSummary(
            status=status,
            # After a divergence the rest of the flush window trained on garbage: not counted.
            steps=div[0] if div else steps,
            epochs_completed=epochs,
            final_test_accuracy=self.last_test if div is None else None,
            best_val_accuracy=self.best_val,
            final_loss=self.last_loss,
            diverged_at_step=div[0] if div else None,
            diverged_metric=div[1] if div else None,
            duration_s=duration,
            samples_per_s=self.samples / duration if duration > 0 else 0.0,
            steps_clipped=self.clipped_steps,
            max_grad_norm=self.max_norm[0] if self.max_norm else None,
            max_grad_norm_step=self.max_norm[1] if self.max_norm else None,
            mean_clip_fraction=(
                self.clip_fraction_sum / self.logged_steps if self.logged_steps else None
            ),
        )
