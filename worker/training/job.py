"""One experiment end to end: load data, pick the device, train. Shared by the CLI and worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from worker.training.config import ExperimentConfig
from worker.training.datasets import default_data_dir, load_dataset
from worker.training.device import resolve_device
from worker.training.loop import OnMetrics, train
from worker.training.result import TrainResult


def run_job(
    config: ExperimentConfig,
    *,
    on_metrics: OnMetrics,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_path: Path | None = None,
    device_override: str | None = None,
    data_dir: Path | None = None,
    flush_every_s: float = 1.0,
) -> TrainResult:
    device = resolve_device(config.resources.device, device_override)
    data = load_dataset(
        config.dataset, seed=config.training.seed, data_dir=data_dir or default_data_dir()
    )
    return train(
        config,
        data,
        device=device,
        on_metrics=on_metrics,
        should_stop=should_stop,
        checkpoint_path=checkpoint_path,
        flush_every_s=flush_every_s,
    )
