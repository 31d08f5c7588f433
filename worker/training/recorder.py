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

from worker.training import step_columns
from worker.training.clipping import ClipStats, decode
from worker.training.config import ClippingConfig
from worker.training.result import MetricPoint
from worker.training.step_columns import StepOutputs, decode_columns, solo_row

Meta = tuple[int, int, float, int, float, bool]  # step, epoch, wall time, samples, lr, logged


@dataclass
class StepBlock:
    """Host values of consecutive steps, one array entry per step (in step order)."""

    step: np.ndarray  # int64, optimizer steps completed after this one
    epoch: np.ndarray  # int64
    wall_time: np.ndarray  # float64 unix seconds
    samples: np.ndarray  # int64, batch size of the step
    logged: np.ndarray  # bool: does this step emit metric points?
    values: dict[str, np.ndarray]  # float64 per ``step_columns.COLUMNS`` entry, by name
    layer_norms: np.ndarray  # [n_steps, n_layers] float64

    def __len__(self) -> int:
        return len(self.step)

    def __getitem__(self, name: str) -> np.ndarray:
        """A step column's values (``block["loss"]``)."""
        return self.values[name]

    def head(self, n: int) -> StepBlock:
        """The first ``n`` steps."""
        out = {f.name: getattr(self, f.name)[:n] for f in fields(self) if f.name != "values"}
        return StepBlock(**out, values={k: v[:n] for k, v in self.values.items()})

    def first_non_finite(self) -> tuple[int, str] | None:
        """The first step with a non-finite divergence column, and that column's name (the
        first such in declaration order)."""
        names = [c.name for c in step_columns.COLUMNS if c.divergence]
        finite = np.stack([np.isfinite(self.values[n]) for n in names])
        bad = ~finite.all(axis=0)
        if not bad.any():
            return None
        k = int(np.argmax(bad))
        return k, names[int(np.argmin(finite[:, k]))]


class StepRecorder:
    """Collects one device row per step (``step_columns.solo_row``) and decodes them."""

    def __init__(
        self,
        layer_names: list[str],
        layer_params: list[list[int]],
        numels: list[int],
        clipping: ClippingConfig,
    ) -> None:
        self.layer_names = layer_names
        self.columns = step_columns.step_metrics()
        self.metric_names = [*self.columns, *(f"grad_norm/{n}" for n in layer_names)]
        self.clipping = clipping
        self.numels = numels
        self._layer_params = [np.asarray(indices, dtype=np.int64) for indices in layer_params]
        self._rows: list[torch.Tensor] = []
        self._meta: list[Meta] = []

    def __len__(self) -> int:
        return len(self._rows)

    def record(
        self,
        step: int,
        epoch: int,
        samples: int,
        learning_rate: float,
        outputs: StepOutputs,
        stats: ClipStats,
        *,
        logged: bool,
    ) -> None:
        """Append one step (no host-device sync: one ``stack`` kernel)."""
        self._rows.append(solo_row(outputs, stats))
        self._meta.append((step, epoch, time.time(), samples, learning_rate, logged))

    def record_rows(self, rows: list[torch.Tensor], meta: list[Meta]) -> None:
        """Append steps measured elsewhere (a member's share of a fused step): one row laid out
        as ``solo_row``'s and one ``Meta`` per step."""
        self._rows.extend(rows)
        self._meta.extend(meta)

    def drain(self) -> StepBlock:
        """Copy and decode everything pending, then clear. The host-device sync point."""
        rows, meta = self._rows, self._meta
        self._rows, self._meta = [], []
        n = len(rows)
        logged = np.array([m[5] for m in meta], dtype=bool)
        learning_rate = np.array([m[4] for m in meta], dtype=np.float64)
        values = {c.name: np.empty(n) for c in step_columns.COLUMNS}
        layer_norms = np.empty((n, len(self.layer_names)))
        n_device = len(step_columns.device_columns())
        # In value mode measured (logged) rows are wider than the others: decode each group.
        measured_group = logged if self.clipping.mode == "value" else np.ones(n, dtype=bool)
        for measured in (True, False):
            where = np.flatnonzero(measured_group == measured)
            if not len(where):
                continue
            raw = torch.stack([rows[k] for k in where]).to("cpu", torch.float64).numpy()
            clip = decode(raw[:, n_device:], self.clipping, self.numels, measured=measured)
            for name, column in decode_columns(raw, clip, learning_rate[where]).items():
                values[name][where] = column
            # A layer's norm: the root of the sum of its parameters' squared norms.
            squares = np.square(clip.param_norms)
            for li, indices in enumerate(self._layer_params):
                layer_norms[where, li] = np.sqrt(squares[:, indices].sum(axis=1))
        return StepBlock(
            step=np.array([m[0] for m in meta], dtype=np.int64),
            epoch=np.array([m[1] for m in meta], dtype=np.int64),
            wall_time=np.array([m[2] for m in meta], dtype=np.float64),
            samples=np.array([m[3] for m in meta], dtype=np.int64),
            logged=logged,
            values=values,
            layer_norms=layer_norms,
        )

    def points(self, block: StepBlock) -> list[MetricPoint]:
        """All metric points of the block's logged steps, step by step."""
        where = np.flatnonzero(block.logged)
        columns = np.column_stack(
            [*(block[name][where] for name in self.columns), block.layer_norms[where]]
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
