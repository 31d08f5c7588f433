"""Device selection and ``run_job`` (data loading + device + train) end to end on the CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from worker.training.device import (
    DeviceUnavailableError,
    job_threads,
    resolve_device,
    usable_cores,
)
from worker.training.job import run_job
from worker.training.result import MetricPoint

from .support import make_config


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("cuda", override="cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_a_job_leaves_a_core_to_its_tracking_unless_told(monkeypatch: pytest.MonkeyPatch) -> None:
    assert job_threads(3) == 3
    assert job_threads(None) == max(1, usable_cores() - 1)
    monkeypatch.setattr("os.sched_getaffinity", lambda _: {0})
    assert job_threads(None) == 1  # one core: training keeps it
    monkeypatch.setattr("os.sched_getaffinity", lambda _: set(range(16)))
    assert job_threads(None) == 15


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_run_job_on_digits(tmp_path: Path) -> None:
    points: list[MetricPoint] = []
    cfg = make_config({"training": {"epochs": 1, "max_steps": 4}})
    result = run_job(
        cfg,
        on_metrics=points.extend,
        checkpoint_path=tmp_path / "c.safetensors",
        device_override="cpu",
        data_dir=tmp_path,
    )
    assert result.status == "succeeded" and result.device == "cpu"
    assert result.summary.steps == 4 and result.checkpoint_written
    assert {p.name for p in points} >= {"loss", "test_accuracy"}


@pytest.mark.parametrize(
    "raw",
    [
        {"training": {"epochs": 2, "batch_size": 50}},
        {"training": {"epochs": 3, "batch_size": 1257}},  # trailing batch of 1: dropped with BN
        {
            "training": {"epochs": 3, "batch_size": 1257},
            "model": {"batch_norm": {"enabled": False}},
        },
        {"training": {"epochs": 5, "max_steps": 7}},
        {"dataset": {"validation_size": 100, "test_size": 0.3}, "training": {"epochs": 1}},
        {"dataset": {"name": "synthetic", "synthetic": {"samples": 333, "features": 5}}},
    ],
)
def test_planned_steps_match_the_steps_trained(tmp_path: Path, raw: dict[str, Any]) -> None:
    from worker.training.job import planned_steps

    cfg = make_config(raw)
    result = run_job(cfg, on_metrics=lambda points: None, device_override="cpu", data_dir=tmp_path)
    assert planned_steps(cfg) == result.summary.steps
