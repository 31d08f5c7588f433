"""The fused trainer: every member reports what its solo run reports (metrics and summary)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.training.fused_support import (
    assert_same_metrics,
    assert_same_summary,
    configs,
    run_fused,
    run_solo,
)
from worker.training.checkpoint import load_checkpoint
from worker.training.fusion import NotFusableError

BASE: dict[str, Any] = {
    "model": {"hidden_layers": [32, 16], "activation": "sigmoid"},
    "optimizer": {"name": "sgd", "learning_rate": 0.1},
    "training": {"epochs": 2, "batch_size": 50, "seed": 0},
}

# Every field a member may vary, each varied at least once (and some together).
EIGHT: list[dict[str, Any]] = [
    {},
    {"training": {"seed": 1}},
    {"optimizer": {"learning_rate": 0.3, "momentum": 0.9}},
    {"optimizer": {"weight_decay": 0.01}, "clipping": {"mode": "norm", "threshold": 0.5}},
    {
        "model": {"init": "normal", "init_std": 0.5},
        "clipping": {"mode": "value", "threshold": 0.01},
    },
    {"model": {"init": "xavier_uniform", "batch_norm": {"decay": 0.9, "epsilon": 0.01}}},
    {
        "training": {"seed": 2},
        "clipping": {"mode": "norm", "threshold": 2.0},
        "optimizer": {"momentum": 0.5, "learning_rate": 0.05},
    },
    {"model": {"batch_norm": {"epsilon": 1e-5}}, "clipping": {"mode": "value", "threshold": 0.1}},
]


def check_group(variations: list[dict[str, Any]], base: dict[str, Any] = BASE, **kw: Any) -> None:
    cfgs = configs(base, variations)
    fused = run_fused(cfgs, **kw)
    for k, cfg in enumerate(cfgs):
        solo = run_solo(cfg, **kw)
        assert_same_metrics(solo.points, fused.points[k])
        assert_same_summary(solo, fused.results[k])


def test_one_member_equals_its_solo_run_exactly() -> None:
    cfgs = configs(BASE, [{"clipping": {"mode": "norm", "threshold": 0.5}}])
    fused = run_fused(cfgs)
    solo = run_solo(cfgs[0])
    # K = 1 takes the solo engine's own kernels: bit for bit.
    assert [(p.name, p.step, p.value) for p in fused.points[0]] == [
        (p.name, p.step, p.value) for p in solo.points
    ]
    assert_same_summary(solo, fused.results[0])


def test_two_members_differing_in_seed_and_learning_rate() -> None:
    check_group([{}, {"training": {"seed": 3}, "optimizer": {"learning_rate": 0.02}}])


def test_eight_members_varying_every_member_field() -> None:
    check_group(EIGHT, flush_every_s=0.0, max_pending_steps=7)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_adaptive_optimizers_with_per_member_hyperparameters(optimizer: str) -> None:
    # Without BN: with BN, a weight fed by an input that is constant over the batch has a
    # gradient that is 0 in exact arithmetic (BN removes the batch mean) but rounding noise in
    # float32, and Adam/RMSprop scale that noise up to a full ±lr step whose sign depends on the
    # summation order. See docs/engine.md ("Equivalence").
    model = {**BASE["model"], "batch_norm": {"enabled": False}}
    base = {**BASE, "model": model, "optimizer": {"name": optimizer, "learning_rate": 0.01}}
    check_group(
        [{}, {"optimizer": {"learning_rate": 0.003, "weight_decay": 0.01, "momentum": 0.5}}],
        base=base,
    )


def test_value_clipping_logged_every_few_steps() -> None:
    base = {**BASE, "training": {**BASE["training"], "log_every_steps": 3}}
    check_group(
        [{"clipping": {"mode": "value", "threshold": 0.01}}, {}, {"clipping": {"mode": "norm"}}],
        base=base,
    )


def test_activation_percentiles_every_few_steps() -> None:
    base = {**BASE, "training": {**BASE["training"], "activation_stats_every_steps": 5}}
    check_group([{}, {"training": {"seed": 4}}], base=base, flush_every_s=0.0, max_pending_steps=3)


# A deep linear network without BN: at learning rate 0.3 it blows up near step 10, after
# several flushes (mid-run); at 0.05 it trains on.
LINEAR: dict[str, Any] = {
    "model": {
        "hidden_layers": [64, 64, 64],
        "activation": "identity",
        "batch_norm": {"enabled": False},
    },
    "optimizer": {"learning_rate": 0.05},
    "training": {"epochs": 2, "seed": 0},
}


def test_a_diverging_member_stops_and_the_others_go_on() -> None:
    variations: list[dict[str, Any]] = [
        {},
        {"optimizer": {"learning_rate": 0.3}},
        {"training": {"seed": 1}, "clipping": {"mode": "norm", "threshold": 1.0}},
    ]
    cfgs = configs(LINEAR, variations)
    fused = run_fused(cfgs, flush_every_s=0.0, max_pending_steps=4)
    statuses = [r.summary.status for r in fused.results]
    assert statuses == ["succeeded", "diverged", "succeeded"]
    assert 4 < fused.results[1].summary.diverged_at_step < fused.results[0].summary.steps
    for k, cfg in enumerate(cfgs):
        solo = run_solo(cfg, flush_every_s=0.0, max_pending_steps=4)
        diverged_at = solo.result.summary.diverged_at_step
        assert fused.results[k].summary.diverged_at_step == diverged_at
        assert_same_metrics(solo.points, fused.points[k], diverged_at)
        assert_same_summary(solo, fused.results[k])


class StopAfter:
    """should_stop that says yes at its n-th poll (one poll per flush)."""

    def __init__(self, n: int) -> None:
        self.polls, self.n = 0, n

    def __call__(self) -> bool:
        self.polls += 1
        return self.polls >= self.n


def never() -> bool:
    return False


def test_a_cancelled_member_stops_with_a_checkpoint_and_the_others_go_on(tmp_path: Path) -> None:
    variations: list[dict[str, Any]] = [{}, {"optimizer": {"learning_rate": 0.05}}, {}]
    variations[2] = {"training": {"seed": 5}}
    cfgs = configs(BASE, variations)
    paths: list[Path | None] = [tmp_path / f"f{k}.safetensors" for k in range(3)]
    kw: dict[str, Any] = {"flush_every_s": 0.0, "max_pending_steps": 5}
    fused = run_fused(cfgs, stops=[never, StopAfter(4), never], paths=paths, **kw)
    assert [r.summary.status for r in fused.results] == ["succeeded", "cancelled", "succeeded"]
    for k, cfg in enumerate(cfgs):
        stop = StopAfter(4) if k == 1 else never
        solo_path = tmp_path / f"s{k}.safetensors"
        solo = run_solo(cfg, should_stop=stop, checkpoint_path=solo_path, **kw)
        assert_same_metrics(solo.points, fused.points[k])
        assert_same_summary(solo, fused.results[k])
        # The member's checkpoint is the solo checkpoint (same step, same weights to rounding).
        solo_model, _ = load_checkpoint(solo_path)
        path = paths[k]
        assert path is not None
        fused_model, _ = load_checkpoint(path)
        for (name, a), (_, b) in zip(
            solo_model.state_dict().items(), fused_model.state_dict().items(), strict=True
        ):
            assert a.shape == b.shape and (a - b).abs().max() <= 1e-5 * (a.abs().max() + 1), name


def test_resume_after_a_stop_equals_an_uninterrupted_group(tmp_path: Path) -> None:
    variations: list[dict[str, Any]] = [{}, {"optimizer": {"learning_rate": 0.05, "momentum": 0.9}}]
    cfgs = configs({**BASE, "training": {**BASE["training"], "epochs": 3}}, variations)
    kw: dict[str, Any] = {"flush_every_s": 0.0, "max_pending_steps": 6}
    straight = run_fused(cfgs, **kw)
    paths: list[Path | None] = [tmp_path / f"m{k}.safetensors" for k in range(2)]
    # Both members stop at the same (mid-epoch) flush, as a killed group would.
    first = run_fused(cfgs, stops=[StopAfter(5), StopAfter(5)], paths=paths, **kw)
    assert [r.summary.status for r in first.results] == ["cancelled", "cancelled"]
    second = run_fused(cfgs, paths=paths, resume=paths, **kw)
    for k in range(2):
        assert_same_metrics(straight.points[k], first.points[k] + second.points[k])
        assert second.results[k].summary.steps == straight.results[k].summary.steps


def test_a_fused_checkpoint_resumes_solo(tmp_path: Path) -> None:
    cfgs = configs(BASE, [{}, {"optimizer": {"momentum": 0.9}}])
    kw: dict[str, Any] = {"flush_every_s": 0.0, "max_pending_steps": 6}
    paths: list[Path | None] = [tmp_path / f"m{k}.safetensors" for k in range(2)]
    first = run_fused(cfgs, stops=[StopAfter(3), StopAfter(3)], paths=paths, **kw)
    straight = run_solo(cfgs[1], **kw)
    rest = run_solo(cfgs[1], resume_from=paths[1], **kw)
    assert_same_metrics(straight.points, first.points[1] + rest.points)


def test_configs_that_are_not_fusable_are_refused() -> None:
    cfgs = configs(BASE, [{}, {"model": {"hidden_layers": [32, 8]}}])
    with pytest.raises(NotFusableError, match=r"model\.hidden_layers"):
        run_fused(cfgs)
