"""The per-step metrics, each declared once: its name, how a step computes it on the device, and
how the host decodes it. The solo loop and the fused loop both build their device rows and read
them back from ``COLUMNS``; adding a per-step metric is one ``StepColumn`` here (and its test).

A step's device row is ``[*device columns, *clipping statistics]`` (``clipping.ClipStats``: a
width that depends on the clipping mode). A device column's function gets the step's detached
outputs and returns one value per member, reducing over the trailing axes only: a solo step has
no member axis (a 0-d result), a fused step a leading one (``[K]``), and the same function serves
both. Decoding happens once per flush in float64, from the device values, the decoded clipping
statistics and the learning rate; a column without ``decode`` reports its device value as is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from worker.training.clipping import ClipStats, ClipSummary


@dataclass(frozen=True)
class StepOutputs:
    """A step's detached outputs: solo ``loss []``, ``logits [B, C]``, ``labels [B]``; fused
    the same with a leading member axis."""

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class HostValues:
    """What ``decode`` reads (float64, one entry per step)."""

    device: dict[str, np.ndarray]  # the device columns' values, by name
    clip: ClipSummary
    learning_rate: np.ndarray


@dataclass(frozen=True)
class StepColumn:
    name: str
    device: Callable[[StepOutputs], torch.Tensor] | None = None  # one value per member
    decode: Callable[[HostValues], np.ndarray] | None = None  # None: the device value
    emitted: bool = True  # a metric point at every logged step (else: internal, e.g. sums)
    # A non-finite value is a divergence, reported even at an unlogged step.
    divergence: bool = False


def _correct(out: StepOutputs) -> torch.Tensor:
    """Correctly classified samples of the mini-batch (a float: the row is one dtype)."""
    return (out.logits.argmax(dim=-1) == out.labels).sum(dim=-1, dtype=out.logits.dtype)


# Emitted metrics keep this order in every step's points, followed by ``grad_norm/<layer>``.
COLUMNS: tuple[StepColumn, ...] = (
    StepColumn("loss", device=lambda out: out.loss, divergence=True),
    StepColumn("correct", device=_correct, emitted=False),  # for the epoch's train_accuracy
    StepColumn("grad_norm", decode=lambda v: v.clip.grad_norm, divergence=True),
    StepColumn("grad_norm_clipped", decode=lambda v: v.clip.grad_norm_clipped),
    StepColumn("clip_fraction", decode=lambda v: v.clip.clip_fraction),
    StepColumn("learning_rate", decode=lambda v: v.learning_rate),
)


def step_metrics() -> tuple[str, ...]:
    """The emitted per-step metric names, in point order."""
    return tuple(c.name for c in COLUMNS if c.emitted)


STEP_METRICS = step_metrics()


def device_columns() -> list[StepColumn]:
    """The columns measured on the device, in row order (the clipping statistics follow)."""
    return [c for c in COLUMNS if c.device is not None]


def _device_values(out: StepOutputs) -> list[torch.Tensor]:
    values = []
    for column in device_columns():
        assert column.device is not None
        values.append(column.device(out))
    return values


def solo_row(out: StepOutputs, stats: ClipStats) -> torch.Tensor:
    """A solo step's device row (one ``stack`` kernel, no host sync)."""
    return torch.stack([*_device_values(out), *stats.tensors()])


def fused_row(out: StepOutputs, clip_block: torch.Tensor) -> torch.Tensor:
    """A fused step's ``[K, n_device + width]`` rows; ``clip_block`` is ``[K, width]``."""
    return torch.cat([*(v.unsqueeze(1) for v in _device_values(out)), clip_block], dim=1)


def decode_columns(
    values: np.ndarray, clip: ClipSummary, learning_rate: np.ndarray
) -> dict[str, np.ndarray]:
    """Every column's host values from the device columns of ``values`` ``[n, row width]``
    and the already decoded clipping statistics."""
    device = {c.name: values[:, i] for i, c in enumerate(device_columns())}
    host = HostValues(device, clip, learning_rate)
    return {c.name: device[c.name] if c.decode is None else c.decode(host) for c in COLUMNS}
