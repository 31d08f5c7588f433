"""A run's progress between flushes: divergence, epoch sums, evaluations, clipping telemetry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from worker.training import step_columns
from worker.training.recorder import StepBlock, StepRecorder
from worker.training.result import MetricPoint, TrainStatus, TrainSummary

OnMetrics = Callable[[Sequence[MetricPoint]], None]
_Evaluated = tuple[dict[str, tuple[float, float]], list[MetricPoint]]
EpochMetrics = Callable[[tuple[float, float], int, int], _Evaluated]


class RunProgress:
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

    def flush(
        self, epoch_end: tuple[int, int] | None = None, extra: Sequence[MetricPoint] = ()
    ) -> TrainStatus:
        """Drain the recorder and emit its points; at an epoch end (``(step, epoch)``) evaluate
        and emit the epoch's points in the same batch; then poll ``should_stop``.

        On divergence, the steps up to and including the first non-finite one are emitted (the
        diverging step is reported even when it is not a logged step: its ``loss`` and
        ``grad_norm``), the rest are dropped, and no epoch metrics are computed.
        """
        block = self.recorder.drain()
        found = block.first_non_finite()
        bad = found[0] if found is not None else None
        if bad is not None:
            block = block.head(bad + 1)
        self._note_steps(block)
        points = self.recorder.points(block)
        # Extra per-step points (activation percentiles) follow their steps' fate.
        last_kept = int(block.step[-1]) if bad is not None and len(block) else None
        points += [p for p in extra if last_kept is None or p.step <= last_kept]
        if found is not None and bad is not None:
            step, epoch, wall = int(block.step[bad]), int(block.epoch[bad]), block.wall_time[bad]
            self.divergence = (step, found[1])
            self.last_loss = float(block["loss"][bad])
            if not block.logged[bad]:
                points += [
                    MetricPoint(c.name, step, epoch, float(block[c.name][bad]), float(wall))
                    for c in step_columns.COLUMNS
                    if c.divergence
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

    def state_dict(self) -> dict[str, Any]:
        """The bookkeeping a resumed attempt needs to report as if never interrupted."""
        return {
            "samples": self.samples,
            "best_val": self.best_val,
            "last_test": self.last_test,
            "last_loss": self.last_loss,
            "epoch_sums": self._epoch,
            "logged_steps": self.logged_steps,
            "clipped_steps": self.clipped_steps,
            "clip_fraction_sum": self.clip_fraction_sum,
            "max_norm": self.max_norm,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.samples, self.best_val = state["samples"], state["best_val"]
        self.last_test, self.last_loss = state["last_test"], state["last_loss"]
        self._epoch = list(state["epoch_sums"])
        self.logged_steps, self.clipped_steps = state["logged_steps"], state["clipped_steps"]
        self.clip_fraction_sum = state["clip_fraction_sum"]
        norm = state["max_norm"]
        self.max_norm = (float(norm[0]), int(norm[1])) if norm else None

    def _note_steps(self, block: StepBlock) -> None:
        if not len(block):
            return
        self._epoch[0] += float(np.dot(block["loss"], block.samples))
        self._epoch[1] += float(block["correct"].sum())
        self._epoch[2] += int(block.samples.sum())
        self.samples += int(block.samples.sum())
        fractions = block["clip_fraction"][block.logged]
        self.logged_steps += len(fractions)
        self.clipped_steps += int((fractions > 0).sum())
        self.clip_fraction_sum += float(np.nansum(fractions))
        grad_norm = block["grad_norm"]
        norms = np.where(np.isfinite(grad_norm), grad_norm, -np.inf)
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
