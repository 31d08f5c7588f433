"""A fused group end to end: load each member's split, pick the device, train together.

The group counterpart of ``job.run_job`` and the seam for the worker: a group task (one Celery
job for a fusable group of experiments) builds one ``GroupMember`` per experiment — with that
experiment's metric sink, cancel flag, checkpoint path and resume point — and calls
``run_group_job``. The study dispatcher decides the groups with ``fusion.fusable_groups``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits, default_data_dir, load_dataset
from worker.training.device import resolve_device
from worker.training.fused_loop import train_fused
from worker.training.fused_member import Member
from worker.training.fusion import check_fusable
from worker.training.progress import OnMetrics
from worker.training.result import TrainResult


@dataclass
class GroupMember:
    config: ExperimentConfig
    on_metrics: OnMetrics
    should_stop: Callable[[], bool] = lambda: False
    checkpoint_path: Path | None = None
    resume_from: Path | None = None
    before_checkpoint: Callable[[], None] = lambda: None


def run_group_job(
    members: Sequence[GroupMember],
    *,
    device_override: str | None = None,
    data_dir: Path | None = None,
    flush_every_s: float = 1.0,
) -> list[TrainResult]:
    """Train ``members`` (fusable: ``NotFusableError`` otherwise) as one fused group; one
    result per member, in order. Members with the same seed share one loaded split."""
    configs = [m.config for m in members]
    check_fusable(configs)
    device = resolve_device(configs[0].resources.device, device_override)
    splits: dict[int, DataSplits] = {}
    for config in configs:
        seed = config.training.seed
        if seed not in splits:
            splits[seed] = load_dataset(
                config.dataset, seed=seed, data_dir=data_dir or default_data_dir()
            )
    return train_fused(
        [
            Member(
                m.config,
                splits[m.config.training.seed],
                on_metrics=m.on_metrics,
                should_stop=m.should_stop,
                checkpoint_path=m.checkpoint_path,
                resume_from=m.resume_from,
                before_checkpoint=m.before_checkpoint,
            )
            for m in members
        ],
        device=device,
        flush_every_s=flush_every_s,
    )
