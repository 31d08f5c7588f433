"""The group job: data per distinct seed, device choice, results in member order."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.training.fused_support import assert_same_metrics, configs, run_solo
from tests.training.test_fused_loop import BASE
from worker.training.fusion import NotFusableError
from worker.training.group_job import GroupMember, run_group_job
from worker.training.result import MetricPoint


def test_a_group_job_reports_each_member_like_its_solo_run(tmp_path: Path) -> None:
    cfgs = configs(BASE, [{}, {"training": {"seed": 1}}, {"optimizer": {"learning_rate": 0.02}}])
    points: list[list[MetricPoint]] = [[] for _ in cfgs]
    paths = [tmp_path / f"{k}.safetensors" for k in range(len(cfgs))]
    results = run_group_job(
        [
            GroupMember(c, on_metrics=points[k].extend, checkpoint_path=paths[k])
            for k, c in enumerate(cfgs)
        ],
        device_override="cpu",
    )
    for k, cfg in enumerate(cfgs):
        assert results[k].status == "succeeded" and results[k].checkpoint_written
        assert_same_metrics(run_solo(cfg).points, points[k])


def test_a_group_job_refuses_unfusable_members() -> None:
    cfgs = configs(BASE, [{}, {"training": {"batch_size": 32}}])
    with pytest.raises(NotFusableError, match=r"training\.batch_size"):
        run_group_job([GroupMember(c, on_metrics=lambda _: None) for c in cfgs])
