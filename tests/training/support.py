"""Helpers shared by the engine tests: configs from partial dicts, and a recording train() call."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits
from worker.training.loop import train
from worker.training.presets import deep_merge
from worker.training.result import MetricPoint, TrainResult

CPU = torch.device("cpu")

# A small, fast default: digits (64 features) through two BN + ELU hidden layers.
SMALL: dict[str, Any] = {
    "model": {"hidden_layers": [32, 16]},
    # Prediction timing is covered by test_prediction_cost.py; elsewhere it only adds time.
    "training": {"epochs": 2, "batch_size": 50, "seed": 0, "measure_prediction_cost": False},
    "resources": {"device": "cpu"},
}


def make_config(
    raw: dict[str, Any] | None = None, *, base: dict[str, Any] = SMALL
) -> ExperimentConfig:
    return ExperimentConfig.model_validate(deep_merge(base, raw or {}))


@dataclass
class Recorded:
    result: TrainResult
    batches: list[list[MetricPoint]] = field(default_factory=list)

    @property
    def points(self) -> list[MetricPoint]:
        return [p for batch in self.batches for p in batch]

    def series(self, name: str) -> list[tuple[int, float]]:
        """``(step, value)`` of one metric, in emission order."""
        return [(p.step, p.value) for p in self.points if p.name == name]

    def values(self, name: str) -> list[float]:
        return [v for _, v in self.series(name)]

    def by_step(self) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = defaultdict(dict)
        for p in self.points:
            out[p.step][p.name] = p.value
        return dict(out)


def run(
    config: ExperimentConfig,
    data: DataSplits,
    *,
    checkpoint_path: Path | None = None,
    **kwargs: Any,
) -> Recorded:
    """``train`` on the CPU, keeping every ``on_metrics`` batch separately."""
    batches: list[list[MetricPoint]] = []
    result = train(
        config,
        data,
        device=CPU,
        on_metrics=lambda points: batches.append(list(points)),
        checkpoint_path=checkpoint_path,
        **kwargs,
    )
    return Recorded(result, batches)
