"""Resuming from a checkpoint continues exactly as if training had never stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from worker.training.checkpoint import checkpoint_step, load_checkpoint
from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.loop import train
from worker.training.result import MetricPoint

CPU = torch.device("cpu")


def config(optimizer: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "dataset": {"name": "digits"},
        "model": {"hidden_layers": [32, 16]},
        "optimizer": {"name": optimizer, "learning_rate": 0.05 if optimizer != "adam" else 0.01},
        "clipping": {"mode": "norm", "threshold": 1.0},
        "training": {"epochs": 4, "batch_size": 32},
    })


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_dataset(ExperimentConfig().dataset, seed=42)


def values(points: list[MetricPoint]) -> dict[tuple[str, int], float]:
    return {(p.name, p.step): p.value for p in points}


class StopAfter:
    """should_stop that says yes at its n-th poll (polls happen at every flush)."""

    def __init__(self, n: int) -> None:
        self.polls, self.n = 0, n

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls == self.n


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "rmsprop"])
@pytest.mark.parametrize("stop_at_poll", [3, 7])  # mid-epoch and later
def test_stop_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, data: DataSplits, optimizer: str, stop_at_poll: int
) -> None:
    cfg = config(optimizer)
    straight: list[MetricPoint] = []
    full = train(cfg, data, device=CPU, on_metrics=straight.extend, flush_every_s=0.0,
                 max_pending_steps=5)

    first: list[MetricPoint] = []
    path = tmp_path / "ckpt.safetensors"
    barriers: list[int] = []
    stopped = train(cfg, data, device=CPU, on_metrics=first.extend, flush_every_s=0.0,
                    max_pending_steps=5, should_stop=StopAfter(stop_at_poll),
                    checkpoint_path=path, before_checkpoint=lambda: barriers.append(len(first)))
    assert stopped.status == "cancelled"
    resume_step = checkpoint_step(path)
    assert resume_step == max(p.step for p in first)  # the checkpoint is never ahead of metrics
    assert barriers and barriers[-1] == len(first)

    second: list[MetricPoint] = []
    resumed = train(cfg, data, device=CPU, on_metrics=second.extend, flush_every_s=0.0,
                    max_pending_steps=5, checkpoint_path=path, resume_from=path)
    assert resumed.status == "succeeded"
    assert min(p.step for p in second) == resume_step + 1
    assert values(first + second) == values(straight)
    assert len(first) + len(second) == len(straight)  # nothing twice
    for field in ("steps", "epochs_completed", "final_test_accuracy", "best_val_accuracy",
                  "final_loss", "steps_clipped", "max_grad_norm", "max_grad_norm_step",
                  "peak_saturated_units", "peak_saturated_units_step",
                  "peak_saturated_units_layer", "collapsed_at_step", "collapse_reason"):
        assert getattr(resumed.summary, field) == getattr(full.summary, field), field


def test_checkpoint_with_training_state_still_loads_for_prediction(
    tmp_path: Path, data: DataSplits
) -> None:
    path = tmp_path / "m.safetensors"
    cfg = config("sgd")
    train(cfg, data, device=CPU, on_metrics=lambda _: None, checkpoint_path=path)
    model, loaded = load_checkpoint(path)
    assert loaded == cfg and not model.training
    assert checkpoint_step(path) > 0
