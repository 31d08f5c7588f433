"""The fused engine on CUDA: captured step vs eager, fallbacks. Skipped (not passed) without CUDA.

Run with ``scripts/gpu-check.sh`` on a machine with a GPU.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from tests.training.fused_support import assert_same_metrics, configs, data_for
from tests.training.test_fused_loop import BASE, EIGHT
from worker.training.fused_loop import train_fused
from worker.training.fused_member import Member
from worker.training.loop import train
from worker.training.result import MetricPoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


def fused(cfgs: list[Any], **kw: Any) -> tuple[list[Any], list[list[MetricPoint]]]:
    points: list[list[MetricPoint]] = [[] for _ in cfgs]
    members = [Member(c, data_for(c), on_metrics=points[k].extend) for k, c in enumerate(cfgs)]
    return train_fused(members, device=CUDA, **kw), points


def test_captured_step_equals_the_eager_step_on_cuda() -> None:
    cfgs = configs(BASE, EIGHT)
    captured, cpoints = fused(cfgs, flush_every_s=0.0, max_pending_steps=7)
    eager, epoints = fused(cfgs, static_step=False, flush_every_s=0.0, max_pending_steps=7)
    for k in range(len(cfgs)):
        assert captured[k].summary.step_mode == "cuda_graph"
        assert eager[k].summary.step_mode == "eager"
        # The same kernels, replayed: equal up to nondeterministic GPU reductions.
        assert_same_metrics(epoints[k], cpoints[k])


def test_one_captured_member_matches_the_solo_engine_on_cuda() -> None:
    cfg = configs({**BASE, "resources": {"device": "cuda"}}, [{}])[0]
    solo: list[MetricPoint] = []
    train(cfg, data_for(cfg), device=CUDA, on_metrics=solo.extend)
    results, points = fused([cfg])
    assert results[0].summary.step_mode == "cuda_graph"
    assert_same_metrics(solo, points[0])


def test_adam_falls_back_to_eager_and_says_why() -> None:
    cfgs = configs({**BASE, "optimizer": {"name": "adam", "learning_rate": 0.001}}, [{}, {}])
    results, points = fused(cfgs)
    for r in results:
        assert r.summary.step_mode is not None and r.summary.step_mode.startswith("eager: adam")
        assert r.summary.status == "succeeded"
    assert all(math.isfinite(p.value) for p in points[0])
