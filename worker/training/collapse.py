"""Peaks of dead/saturated units, and runs that collapsed: read from the metric stream alone.

A run has **collapsed** when, until its end,

- every unit of some layer is dead (or saturated) at every probe measurement from step *s* on —
  the reason names the layer and the largest gradient norm seen up to *s*; or
- after an explosion (a gradient norm ≥ ``EXPLOSION_GRAD_NORM``), every epoch's evaluation from
  step *s* on has a loss within ``LOSS_TOLERANCE`` of ln(classes) and an accuracy no better than
  chance (the evaluated split's majority-class share, plus ``CHANCE_SLACK``).

``collapsed_at_step`` is *s*: the first measurement showing the final state (so its resolution
is the probe schedule, or the epoch). A diverged run reports no collapse: divergence is its story.
The watch sees only what ``on_metrics`` receives, so any trainer emitting the same metrics gets
the same verdict.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.training.datasets import DataSplits
from worker.training.progress import OnMetrics
from worker.training.result import MetricPoint, TrainStatus

EXPLOSION_GRAD_NORM = 1e3  # healthy cross-entropy MLPs see norms of 0.1-10
LOSS_TOLERANCE = 0.05  # nats around ln(classes)
CHANCE_SLACK = 0.01
_SPLITS = ("val", "test", "train")  # the evaluation a verdict uses, in order of preference
_STATES = ("dead", "saturated")


def evaluated_labels(data: DataSplits) -> np.ndarray:
    """The labels of the split whose epoch metrics the watch reads (as ``_SPLITS`` prefers)."""
    for y in (data.y_val, data.y_test, data.y_train):
        if len(y):
            return y
    raise ValueError("no labels to judge chance accuracy by")


def majority_share(y: np.ndarray) -> float:
    """Chance accuracy: the share of the most frequent class."""
    return float(np.bincount(y).max() / len(y))


def format_norm(value: float) -> str:
    """2.7e4 rather than 2.7e+04; plain for values under 1000."""
    if abs(value) < 1e3:
        return f"{value:.3g}"
    mantissa, exponent = f"{value:.1e}".split("e")
    return f"{mantissa}e{int(exponent)}"


class CollapseWatch:
    """Follows the metric stream: unit peaks, fully inactive layers, chance-level evaluations."""

    def __init__(self, n_classes: int, chance_accuracy: float) -> None:
        self.chance_loss = math.log(n_classes)
        self.n_classes = n_classes
        self.chance_accuracy = chance_accuracy
        self.max_norm: tuple[float, int] | None = None  # over logged steps so far
        self.peaks: dict[str, tuple[float, int, str]] = {}  # state: (fraction, step, layer)
        # layer: (state, first step of its current all-inactive streak, max_norm then)
        self.full: dict[str, tuple[str, int, tuple[float, int] | None]] = {}
        self.explosion: tuple[float, int] | None = None  # the first norm over the threshold
        self.chance_since: int | None = None  # first epoch end of the current chance streak

    def wrap(self, sink: OnMetrics) -> OnMetrics:
        """``sink``, after which this watch sees every batch too."""

        def observe_then_forward(points: Sequence[MetricPoint]) -> None:
            self.observe(points)
            sink(points)

        return observe_then_forward

    def observe(self, points: Sequence[MetricPoint]) -> None:
        by_step: dict[int, dict[str, float]] = defaultdict(dict)
        for p in points:
            by_step[p.step][p.name] = p.value
        for step in sorted(by_step):
            self._note_step(step, by_step[step])

    def _note_step(self, step: int, values: dict[str, float]) -> None:
        norm = values.get("grad_norm")
        if norm is not None and math.isfinite(norm):
            if self.max_norm is None or norm > self.max_norm[0]:
                self.max_norm = (norm, step)
            if self.explosion is None and norm >= EXPLOSION_GRAD_NORM:
                self.explosion = (norm, step)
        for name, value in values.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "units" and parts[2] in _STATES:
                self._note_units(parts[1], parts[2], value, step)
        for split in _SPLITS:
            if f"{split}_loss" in values and f"{split}_accuracy" in values:
                loss, accuracy = values[f"{split}_loss"], values[f"{split}_accuracy"]
                at_chance = (
                    abs(loss - self.chance_loss) <= LOSS_TOLERANCE
                    and accuracy <= self.chance_accuracy + CHANCE_SLACK
                )
                if not at_chance:
                    self.chance_since = None
                elif self.chance_since is None:
                    self.chance_since = step
                break

    def _note_units(self, layer: str, state: str, fraction: float, step: int) -> None:
        peak = self.peaks.get(state)
        if peak is None or fraction > peak[0]:
            self.peaks[state] = (fraction, step, layer)
        if fraction < 1.0:
            self.full.pop(layer, None)
        elif layer not in self.full:
            self.full[layer] = (state, step, self.max_norm)

    def collapse(self) -> tuple[int, str] | None:
        """``(collapsed_at_step, reason)`` if the run ended collapsed."""
        verdicts: list[tuple[int, int, str]] = []  # step, preference, reason
        for layer, (state, since, norm) in self.full.items():
            reason = f"all units of {layer} {state}"
            if norm is not None:
                reason += f" after grad norm {format_norm(norm[0])} at step {norm[1]}"
            verdicts.append((since, 0, reason))
        explosion, chance = self.explosion, self.chance_since
        if explosion is not None and chance is not None and explosion[1] <= chance:
            verdicts.append((chance, 1, (
                f"loss stuck at ln({self.n_classes}) with chance accuracy from step {chance} "
                f"after grad norm {format_norm(explosion[0])} at step {explosion[1]}"
            )))
        if not verdicts:
            return None
        step, _, reason = min(verdicts)
        return step, reason

    def summary_fields(self, status: TrainStatus) -> dict[str, Any]:
        """The ``TrainSummary`` fields this watch fills in."""
        fields: dict[str, Any] = {}
        for state in _STATES:
            peak = self.peaks.get(state)
            fields[f"peak_{state}_units"] = peak[0] if peak else None
            fields[f"peak_{state}_units_step"] = peak[1] if peak else None
            fields[f"peak_{state}_units_layer"] = peak[2] if peak else None
        found = self.collapse() if status != "diverged" else None
        fields["collapsed_at_step"] = found[0] if found else None
        fields["collapse_reason"] = found[1] if found else None
        return fields

    def state_dict(self) -> dict[str, Any]:
        return {
            "max_norm": self.max_norm,
            "peaks": self.peaks,
            "full": self.full,
            "explosion": self.explosion,
            "chance_since": self.chance_since,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict`` after a JSON round trip (tuples come back as lists)."""

        def pair(value: Any) -> tuple[float, int] | None:
            return (float(value[0]), int(value[1])) if value else None

        self.max_norm = pair(state["max_norm"])
        self.explosion = pair(state["explosion"])
        self.chance_since = state["chance_since"]
        self.peaks = {k: (float(f), int(s), str(n)) for k, (f, s, n) in state["peaks"].items()}
        self.full = {k: (str(st), int(s), pair(n)) for k, (st, s, n) in state["full"].items()}
