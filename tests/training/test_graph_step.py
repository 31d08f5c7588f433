"""The capturable step, run eagerly on the CPU: it must train exactly like the eager loop."""

from __future__ import annotations

from typing import Any

import torch

from tests.training.fused_support import configs, data_for, run_fused
from tests.training.test_fused_loop import BASE, LINEAR
from worker.training.fused_group import Group
from worker.training.fused_member import Member, MemberRun
from worker.training.graph_step import capture_obstacle


def exact(a: Any, b: Any) -> list[tuple[str, int, float]]:
    assert [(p.name, p.step, p.value) for p in a] == [(p.name, p.step, p.value) for p in b]
    return []


def test_static_step_equals_the_eager_step_bit_for_bit() -> None:
    # digits' 1258 training samples leave a short last batch of 8: it runs eagerly.
    base = {**BASE, "training": {**BASE["training"], "log_every_steps": 3}}
    variations: list[dict[str, Any]] = [
        {"clipping": {"mode": "value", "threshold": 0.01}},
        {"training": {"seed": 1}, "optimizer": {"momentum": 0.9}},
        {"clipping": {"mode": "norm", "threshold": 0.5}},
    ]
    cfgs = configs(base, variations)
    kw: dict[str, Any] = {"flush_every_s": 0.0, "max_pending_steps": 7}
    eager = run_fused(cfgs, static_step=False, **kw)
    static = run_fused(cfgs, static_step=True, **kw)
    for k in range(len(cfgs)):
        exact(eager.points[k], static.points[k])
        assert static.results[k].summary.step_mode is None  # only reported on CUDA


def test_static_step_survives_a_member_dropping_out() -> None:
    cfgs = configs(LINEAR, [{}, {"optimizer": {"learning_rate": 0.3}}, {"training": {"seed": 1}}])
    kw: dict[str, Any] = {"flush_every_s": 0.0, "max_pending_steps": 4}
    eager = run_fused(cfgs, static_step=False, **kw)
    static = run_fused(cfgs, static_step=True, **kw)
    assert [r.summary.status for r in static.results] == ["succeeded", "diverged", "succeeded"]
    for k in range(len(cfgs)):
        exact(eager.points[k], static.points[k])


def _group(optimizer: str) -> Group:
    cfgs = configs({**BASE, "optimizer": {"name": optimizer}}, [{}])
    runs = [
        MemberRun(Member(c, data_for(c), on_metrics=lambda _: None), torch.device("cpu"))
        for c in cfgs
    ]
    return Group(runs, 0, torch.device("cpu"))


def test_capture_obstacles_are_named() -> None:
    cuda = torch.device("cuda")
    assert capture_obstacle(_group("sgd"), cuda) is None
    assert capture_obstacle(_group("rmsprop"), cuda) is None
    reason = capture_obstacle(_group("adam"), cuda)
    assert reason is not None and "adam" in reason
    reason = capture_obstacle(_group("sgd"), torch.device("cpu"))
    assert reason is not None and "cpu" in reason
