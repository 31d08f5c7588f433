"""Per-step values kept on the device and copied to the host once per flush.

Reading a device tensor's value (``.item()``, ``.cpu()``) blocks until the GPU catches up, so the
hot loop only stacks each step's 0-d tensors into one row and appends it here (one small kernel
per step). ``drain`` copies everything pending at once and decodes it, in float64, into a
``StepBlock``: the loop finds divergence in it, sums training loss/accuracy from it, and turns its
logged steps into metric points.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields

import numpy as np
import torch

from worker.training.clipping import ClipStats, decode
from worker.training.config import ClippingConfig
from worker.training.result import MetricPoint

# Emitted for every logged step, followed by ``grad_norm/<layer>`` for each linear layer.
STEP_METRICS = ("loss", "grad_norm", "grad_norm_clipped", "clip_fraction", "learning_rate")


@dataclass
class StepBlock:
    """Host values of consecutive steps, one array entry per step (in step order)."""

    step: np.ndarray  # int64, optimizer steps completed after this one
    epoch: np.ndarray  # int64
    wall_time: np.ndarray  # float64 unix seconds
    samples: np.ndarray  # int64, batch size of the step
    learning_rate: np.ndarray  # float64
    logged: np.ndarray  # bool: does this step emit metric points?
    loss: np.ndarray  # float64 mini-batch loss
    correct: np.ndarray  # float64 correctly classified samples of the mini-batch
    grad_norm: np.ndarray  # float64, before clipping
    grad_norm_clipped: np.ndarray  # float64 (NaN where not measured)
    clip_fraction: np.ndarray  # float64 (NaN where not measured)
    layer_norms: np.ndarray  # [n_steps, n_layers] float64

    def __len__(self) -> int:
        return len(self.step)

    def head(self, n: int) -> StepBlock:
        """The first ``n`` steps."""
        return StepBlock(**{f.name: getattr(self, f.name)[:n] for f in fields(self)})

    def first_non_finite(self) -> int | None:
        """Index of the first step whose loss or gradient norm is NaN or infinite."""
        bad = ~(np.isfinite(self.loss) & np.isfinite(self.grad_norm))
        return int(np.argmax(bad)) if bad.any() else None


class StepRecorder:
    """Collects one device row per step: ``[loss, correct, *ClipStats.tensors()]``."""

    def __init__(
        self,
        layer_names: list[str],
        layer_params: list[list[int]],
        numels: list[int],
        clipping: ClippingConfig,
    ) -> None:
        self.layer_names = layer_names
        self.metric_names = [*STEP_METRICS, *(f"grad_norm/{n}" for n in layer_names)]
        self.clipping = clipping
        self.numels = numels
        self._layer_params = [np.asarray(indices, dtype=np.int64) for indices in layer_params]
        self._rows: list[torch.Tensor] = []
        self._meta: list[tuple[int, int, float, int, float, bool]] = []

    def __len__(self) -> int:
        return len(self._rows)

    def record(
        self,
        step: int,
        epoch: int,
        samples: int,
        learning_rate: float,
        loss: torch.Tensor,
        correct: torch.Tensor,
        stats: ClipStats,
        *,
        logged: bool,
    ) -> None:
        """Append one step (no host-device sync: one ``stack`` kernel)."""
        self._rows.append(torch.stack([loss, correct, *stats.tensors()]))
        self._meta.append((step, epoch, time.time(), samples, learning_rate, logged))

    def record_rows(
        self, rows: list[torch.Tensor], meta: list[tuple[int, int, float, int, float, bool]]
    ) -> None:
        """Append steps measured elsewhere (a member's share of a fused step): one row
        ``[loss, correct, *ClipStats.tensors()]`` and one ``(step, epoch, wall_time, samples,
        learning_rate, logged)`` per step."""
        self._rows.extend(rows)
        self._meta.extend(meta)

    def drain(self) -> StepBlock:
        """Copy and decode everything pending, then clear. The host-device sync point."""
        rows, meta = self._rows, self._meta
        self._rows, self._meta = [], []
        n = len(rows)
        logged = np.array([m[5] for m in meta], dtype=bool)
        loss, correct = np.empty(n), np.empty(n)
        grad_norm, clipped, fraction = np.empty(n), np.empty(n), np.empty(n)
        layer_norms = np.empty((n, len(self.layer_names)))
        # In value mode measured (logged) rows are wider than the others: decode each group.
        measured_group = logged if self.clipping.mode == "value" else np.ones(n, dtype=bool)
        for measured in (True, False):
            where = np.flatnonzero(measured_group == measured)
            if not len(where):
                continue
            values = torch.stack([rows[k] for k in where]).to("cpu", torch.float64).numpy()
            loss[where], correct[where] = values[:, 0], values[:, 1]
            clip = decode(values[:, 2:], self.clipping, self.numels, measured=measured)
            grad_norm[where] = clip.grad_norm
            clipped[where] = clip.grad_norm_clipped
            fraction[where] = clip.clip_fraction
            # A layer's norm: the root of the sum of its parameters' squared norms.
            squares = np.square(clip.param_norms)
            for li, indices in enumerate(self._layer_params):
                layer_norms[where, li] = np.sqrt(squares[:, indices].sum(axis=1))
        return StepBlock(
            step=np.array([m[0] for m in meta], dtype=np.int64),
            epoch=np.array([m[1] for m in meta], dtype=np.int64),
            wall_time=np.array([m[2] for m in meta], dtype=np.float64),
            samples=np.array([m[3] for m in meta], dtype=np.int64),
            learning_rate=np.array([m[4] for m in meta], dtype=np.float64),
            logged=logged,
            loss=loss,
            correct=correct,
            grad_norm=grad_norm,
            grad_norm_clipped=clipped,
            clip_fraction=fraction,
            layer_norms=layer_norms,
        )

    def points(self, block: StepBlock) -> list[MetricPoint]:
        """All metric points of the block's logged steps, step by step."""
        where = np.flatnonzero(block.logged)
        columns = np.column_stack(
            [
                block.loss[where],
                block.grad_norm[where],
                block.grad_norm_clipped[where],
                block.clip_fraction[where],
                block.learning_rate[where],
                block.layer_norms[where],
            ]
        )
        names = self.metric_names
        out: list[MetricPoint] = []
        for k, row in zip(where.tolist(), columns.tolist(), strict=True):
            step, epoch, wall = int(block.step[k]), int(block.epoch[k]), float(block.wall_time[k])
            out.extend(
                MetricPoint(name, step, epoch, value, wall)
                for name, value in zip(names, row, strict=True)
            )
        return out
