"""One member of a fused group: its inputs, and everything the solo loop keeps per run.

A member owns an ordinary ``MLP`` (built and seeded exactly as the solo engine builds it, then
pointed at its slot of the stacked tensors), its shuffling generator, its ``StepRecorder`` and
``RunProgress``, and writes solo-format checkpoints: a member can resume fused or solo.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.training.checkpoint import TrainingState, load_training_state, save_checkpoint
from worker.training.collapse import CollapseWatch, evaluated_labels, majority_share
from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits
from worker.training.evaluation import epoch_points, evaluate, probe_inputs
from worker.training.loop import build_optimizer
from worker.training.model import MLP
from worker.training.prediction_cost import measure_prediction_cost
from worker.training.progress import OnMetrics, RunProgress, _Evaluated
from worker.training.recorder import StepRecorder
from worker.training.result import MetricPoint, TrainResult, TrainStatus
from worker.training.units import probe_points, probe_telemetry


@dataclass
class Member:
    """What the solo ``train`` takes, for one member of a group."""

    config: ExperimentConfig
    data: DataSplits
    on_metrics: OnMetrics
    should_stop: Callable[[], bool] = lambda: False
    checkpoint_path: Path | None = None
    resume_from: Path | None = None
    before_checkpoint: Callable[[], None] = lambda: None


@dataclass
class Position:
    """Where a (resumed) member stands; all members of a group must stand at the same place."""

    step: int = 0
    epoch: int = 1
    next_index: int = 0


@dataclass
class MemberRun:
    spec: Member
    device: torch.device
    model: MLP = field(init=False)
    position: Position = field(default_factory=Position)
    epochs_completed: int = 0
    earlier_s: float = 0.0
    optimizer_state: dict[Any, dict[str, Any]] = field(default_factory=dict)
    resumed_perm: torch.Tensor | None = None
    status: TrainStatus | None = None  # set when the member stops
    stopped_at: float | None = None  # perf_counter() when it stopped
    final_step: int = 0

    def __post_init__(self) -> None:
        cfg, data = self.spec.config, self.spec.data
        torch.manual_seed(cfg.training.seed)  # the solo engine's init, draw for draw
        self.model = MLP(cfg.model, data.n_features, data.n_classes).to(self.device)
        self.param_groups = build_optimizer(self.model, cfg.optimizer).state_dict()["param_groups"]
        self.shuffle_gen = torch.Generator().manual_seed(cfg.training.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(params)}
        layers = self.model.layer_items()
        self.recorder = StepRecorder(
            [name for name, _ in layers],
            [[index[id(p)] for p in layer.linear.parameters()] for _, layer in layers],
            [p.numel() for p in params],
            cfg.clipping,
        )
        self.probe = torch.from_numpy(probe_inputs(data)).to(self.device)
        self.pending_act: list[tuple[int, int, float, torch.Tensor]] = []
        # This epoch's percentiles when the group measured them for all members at once.
        self.epoch_act: torch.Tensor | None = None
        self.epoch_evals: dict[str, tuple[float, float]] | None = None
        # The solo loop's collapse watch, per member (it only reads the member's metrics).
        self.watch = CollapseWatch(data.n_classes, majority_share(evaluated_labels(data)))
        self.run = RunProgress(
            self.recorder, self.watch.wrap(self.spec.on_metrics), self.spec.should_stop,
            self._epoch_metrics,
        )
        if self.spec.resume_from is not None:
            state = load_training_state(self.spec.resume_from, self.model)
            self.optimizer_state = state.optimizer["state"]
            self.shuffle_gen.set_state(state.shuffle_rng)
            self.run.load_state_dict(state.progress)
            if "collapse" in state.progress:  # absent in checkpoints written before it existed
                self.watch.load_state_dict(state.progress["collapse"])
            self.position = Position(state.step, state.epoch, state.next_index)
            self.epochs_completed, self.earlier_s = state.epochs_completed, state.elapsed_s
            self.resumed_perm = state.perm

    @property
    def learning_rate(self) -> float:
        return self.spec.config.optimizer.learning_rate

    def _epoch_metrics(
        self, train_stats: tuple[float, float], at_step: int, epoch: int
    ) -> _Evaluated:
        # The solo loop's epoch evaluation, on this member's (unstacked view) model.
        evals = self.epoch_evals
        if evals is None:
            evals = evaluate(self.model, self.spec.data, self.device)
        self.epoch_evals = None
        if self.epoch_act is None:
            self.epoch_act = probe_telemetry(self.model, self.probe)
        act, self.epoch_act = self.epoch_act.cpu().numpy(), None
        return evals, [
            *epoch_points(self.model, evals, train_stats, at_step, epoch),
            *probe_points(self.model, act, at_step, epoch, time.time()),
        ]

    def take_act_points(self) -> list[MetricPoint]:
        if not self.pending_act:
            return []
        values = torch.stack([t for *_, t in self.pending_act]).cpu().numpy()
        points = [
            p
            for (s, e, w, _), v in zip(self.pending_act, values, strict=True)
            for p in probe_points(self.model, v, s, e, w)
        ]
        self.pending_act.clear()
        return points

    def checkpoint(
        self,
        position: Position,
        optimizer_state: dict[int, dict[str, Any]],
        perm: torch.Tensor | None,
        elapsed_s: float,
    ) -> None:
        path = self.spec.checkpoint_path
        if path is None:
            return
        self.spec.before_checkpoint()
        save_checkpoint(
            path,
            self.model,
            self.spec.config,
            TrainingState(
                step=position.step,
                epoch=position.epoch,
                next_index=position.next_index,
                epochs_completed=self.epochs_completed,
                elapsed_s=self.earlier_s + elapsed_s,
                progress={**self.run.state_dict(), "collapse": self.watch.state_dict()},
                optimizer={"state": optimizer_state, "param_groups": self.param_groups},
                shuffle_rng=self.shuffle_gen.get_state(),
                perm=perm,
            ),
            standardization=self.spec.data.standardization(),
        )

    def stop(self, status: TrainStatus, step: int) -> None:
        self.status, self.final_step, self.stopped_at = status, step, time.perf_counter()

    def result(self, started: float) -> TrainResult:
        assert self.status is not None and self.stopped_at is not None
        duration = self.earlier_s + self.stopped_at - started
        path = self.spec.checkpoint_path
        summary = self.run.summary(self.status, self.final_step, self.epochs_completed, duration)
        extra = self.watch.summary_fields(self.status)
        # As the solo loop: timed on the member's own (unstacked) model, unless it was stopped.
        if self.spec.config.training.measure_prediction_cost and self.status != "cancelled":
            extra["prediction_cost"] = measure_prediction_cost(self.model, self.spec.config.model)
        return TrainResult(
            summary=summary.model_copy(update=extra),
            device=str(self.device),
            checkpoint_written=path is not None and path.is_file(),
        )
