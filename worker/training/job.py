"""One experiment end to end: load data, pick the device, train. Shared by the CLI and worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from worker.training.config import ExperimentConfig
from worker.training.datasets import default_data_dir, load_dataset, split_count
from worker.training.device import resolve_device
from worker.training.loop import steps_per_epoch, train
from worker.training.progress import OnMetrics
from worker.training.result import TrainResult


def run_job(
    config: ExperimentConfig,
    *,
    on_metrics: OnMetrics,
    should_stop: Callable[[], bool] = lambda: False,
    checkpoint_path: Path | None = None,
    resume_from: Path | None = None,
    before_checkpoint: Callable[[], None] = lambda: None,
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
        resume_from=resume_from,
        before_checkpoint=before_checkpoint,
        flush_every_s=flush_every_s,
    )


# Samples each dataset's training pool holds before validation/test are cut from it.
POOL_SIZES = {"digits": 1797, "mnist_5k": 5000, "mnist": 60_000, "fashion_mnist": 60_000}


def planned_steps(config: ExperimentConfig) -> int:
    """Optimizer steps the config asks for (epochs × steps per epoch, capped by max_steps),
    computed without loading any data: the service checks quotas with it at submission."""
    ds = config.dataset
    pool = ds.synthetic_shape.samples if ds.name == "synthetic" else POOL_SIZES[ds.name]
    n_val = split_count(ds.validation_size, pool, "validation_size")
    n_test = (
        0 if ds.name in ("mnist", "fashion_mnist") else split_count(ds.test_size, pool, "test_size")
    )
    n_train = max(pool - n_val - n_test, 0)
    steps = config.training.epochs * steps_per_epoch(
        n_train, config.training.batch_size, config.model.batch_norm.enabled
    )
    return min(steps, config.training.max_steps or steps)
