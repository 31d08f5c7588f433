"""What the engine reports: metric points, the run's summary, and the result."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal, NamedTuple

from pydantic import BaseModel, PlainSerializer

TrainStatus = Literal["succeeded", "diverged", "cancelled"]


def encode_float(value: float) -> float | str:
    """JSON has no NaN/Infinity: write them as the strings "NaN", "Infinity", "-Infinity"."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


# A float that survives JSON: finite as a number, non-finite as a string (never a silent null).
JsonFloat = Annotated[float, PlainSerializer(encode_float, when_used="json")]


class MetricPoint(NamedTuple):
    name: str
    step: int  # optimizer steps completed
    epoch: int  # 1-based epoch the step belongs to
    value: float  # may be NaN/±inf: divergence is data, not an error
    wall_time: float  # unix seconds


class PredictionCost(BaseModel):
    """Eval-mode prediction time at one batch size, in µs per sample (median of repeated timings,
    see docs/engine.md): the model as trained, with BN folded, and a BN-free net of the same
    widths; the ratios are to the BN-free net."""

    batch_size: int
    trained_us: JsonFloat
    folded_us: JsonFloat
    no_bn_us: JsonFloat
    trained_vs_no_bn: JsonFloat
    folded_vs_no_bn: JsonFloat


class TrainSummary(BaseModel):
    """The fields the CLI prints and the service stores; identical in both."""

    status: TrainStatus
    steps: int = 0
    epochs_completed: int = 0
    final_test_accuracy: JsonFloat | None = None
    best_val_accuracy: JsonFloat | None = None
    final_loss: JsonFloat | None = None
    diverged_at_step: int | None = None
    diverged_metric: str | None = None
    duration_s: JsonFloat = 0.0
    samples_per_s: JsonFloat = 0.0
    # Clipping telemetry: how often and how hard clipping worked.
    steps_clipped: int = 0
    max_grad_norm: JsonFloat | None = None
    max_grad_norm_step: int | None = None
    mean_clip_fraction: JsonFloat | None = None
    # How the training step ran on CUDA: "cuda_graph", or "eager: <why not captured>".
    step_mode: str | None = None
    # Units dead (ReLU family) or saturated on every probe input: the largest fraction of a
    # layer's units over all measurements, with its step and layer (worker/training/units.py).
    peak_dead_units: JsonFloat | None = None
    peak_dead_units_step: int | None = None
    peak_dead_units_layer: str | None = None
    peak_saturated_units: JsonFloat | None = None
    peak_saturated_units_step: int | None = None
    peak_saturated_units_layer: str | None = None
    # A run that ended dead or at chance level (worker/training/collapse.py); still "succeeded".
    collapsed_at_step: int | None = None
    collapse_reason: str | None = None
    prediction_cost: list[PredictionCost] | None = None


@dataclass
class TrainResult:
    summary: TrainSummary
    device: str
    checkpoint_written: bool = False

    @property
    def status(self) -> TrainStatus:
        return self.summary.status
