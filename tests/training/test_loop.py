"""The training loop: equivalence with a hand-written loop, metrics, divergence, cancellation."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from worker.training.config import DatasetConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.loop import steps_per_epoch
from worker.training.step_columns import STEP_METRICS

from .support import make_config, run

# ---- 20 steps of the engine == a plain PyTorch loop written by hand -----------------------------

LR, BATCH, DECAY, EPS = 0.05, 100, 0.99, 1e-3


def _hand_loop(
    data: DataSplits, mode: str, threshold: float, steps: int, seed: int = 0
) -> tuple[list[dict[str, float]], dict[str, torch.Tensor]]:
    """The seed's network with nn.Linear + F.batch_norm, SGD and clipping written out."""
    torch.manual_seed(seed)
    widths = [data.n_features, 32, 16, data.n_classes]
    linears = [nn.Linear(i, o, bias=False) for i, o in itertools.pairwise(widths)]
    for lin in linears:
        nn.init.kaiming_normal_(lin.weight, nonlinearity="relu")
    betas = [torch.zeros(o, requires_grad=True) for o in widths[1:]]
    running = [(torch.zeros(o), torch.ones(o)) for o in widths[1:]]
    params = [p for lin, b in zip(linears, betas, strict=True) for p in (lin.weight, b)]

    x_all, y_all = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    n = len(y_all)
    per_epoch = n // BATCH + (1 if n % BATCH > 1 else 0)
    shuffle = torch.Generator().manual_seed(seed)
    logged: list[dict[str, float]] = []
    while len(logged) < steps:
        perm = torch.randperm(n, generator=shuffle)
        for i in range(per_epoch):
            if len(logged) == steps:
                break
            idx = perm[i * BATCH : (i + 1) * BATCH]
            h = x_all[idx]
            for k, (lin, beta, (rm, rv)) in enumerate(zip(linears, betas, running, strict=True)):
                z = F.batch_norm(lin(h), rm, rv, None, beta, True, 1 - DECAY, EPS)
                h = F.elu(z) if k < len(linears) - 1 else z
            loss = F.cross_entropy(h, y_all[idx])
            for p in params:
                p.grad = None
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            flat = torch.cat([g.flatten() for g in grads])
            norm = float(torch.linalg.vector_norm(flat))
            fraction = 0.0
            if mode == "value":
                fraction = int((flat.abs() > threshold).sum()) / flat.numel()
                torch.nn.utils.clip_grad_value_(params, threshold)
            elif mode == "norm":
                fraction = float(norm > threshold)
                torch.nn.utils.clip_grad_norm_(params, threshold)
            with torch.no_grad():
                for p in params:
                    assert p.grad is not None
                    p.add_(p.grad, alpha=-LR)
            logged.append({"loss": loss.item(), "grad_norm": norm, "clip_fraction": fraction})
    state: dict[str, torch.Tensor] = {}
    for name, lin, beta, (rm, rv) in zip(
        ["hidden1", "hidden2", "outputs"], linears, betas, running, strict=True
    ):
        state[f"layers.{name}.linear.weight"] = lin.weight.detach()
        state[f"layers.{name}.bn.beta"] = beta.detach()
        state[f"layers.{name}.bn.running_mean"] = rm
        state[f"layers.{name}.bn.running_var"] = rv
    return logged, state


@pytest.mark.parametrize(("mode", "threshold"), [("none", 1.0), ("value", 0.05), ("norm", 1.2)])
def test_twenty_steps_equal_a_hand_written_loop(
    digits: DataSplits, tmp_path: Path, mode: str, threshold: float
) -> None:
    cfg = make_config(
        {
            "optimizer": {"learning_rate": LR},
            "clipping": {"mode": mode, "threshold": threshold},
            "training": {"batch_size": BATCH, "max_steps": 20, "epochs": 5},
        }
    )
    assert steps_per_epoch(len(digits.y_train), BATCH, True) == 13  # 20 steps cross an epoch
    rec = run(cfg, digits, checkpoint_path=tmp_path / "c.safetensors")
    expected, state = _hand_loop(digits, mode, threshold, steps=20)
    steps = rec.by_step()
    assert rec.result.summary.steps == 20 and sorted(steps) == list(range(1, 21))
    for step, want in enumerate(expected, start=1):
        got = steps[step]
        assert abs(got["loss"] - want["loss"]) < 1e-6, step
        assert got["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-5)
        assert got["clip_fraction"] == pytest.approx(want["clip_fraction"], abs=1e-12)
    if mode == "value":
        assert any(w["clip_fraction"] > 0 for w in expected)
    if mode == "norm":
        assert 0 < sum(w["clip_fraction"] for w in expected) < 20
    saved = {k: v for k, v in load_file(str(tmp_path / "c.safetensors")).items()
             if not k.startswith(("train.", "data."))}  # state and input statistics ride along
    assert set(saved) == set(state)
    for key, value in state.items():
        torch.testing.assert_close(saved[key], value, rtol=0, atol=1e-6, msg=key)


# ---- metrics ------------------------------------------------------------------------------------

EPOCH_METRICS = (
    "train_loss",
    "train_accuracy",
    "val_loss",
    "val_accuracy",
    "test_loss",
    "test_accuracy",
)


def test_every_metric_the_spec_lists_appears(digits: DataSplits) -> None:
    cfg = make_config({"clipping": {"mode": "value", "threshold": 0.5}})
    before = time.time()
    rec = run(cfg, digits)
    after = time.time()
    n = steps_per_epoch(len(digits.y_train), 50, True)
    names = {p.name for p in rec.points}
    layers = ("hidden1", "hidden2", "outputs")
    per_step = {*STEP_METRICS, *(f"grad_norm/{ly}" for ly in layers)}
    per_epoch = {
        *EPOCH_METRICS,
        *(f"bn/{ly}/{stat}" for ly in layers for stat in ("running_mean_abs", "running_var_mean")),
        *(f"act/{ly}/{q}" for ly in layers for q in ("p15", "p50", "p85")),
        "units/hidden1/saturated",  # ELU: saturated; the logits' identity is not measured
        "units/hidden2/saturated",
    }
    assert names == per_step | per_epoch
    assert per_step == {
        "loss",
        "grad_norm",
        "grad_norm_clipped",
        "clip_fraction",
        "learning_rate",
    } | {
        "grad_norm/hidden1",
        "grad_norm/hidden2",
        "grad_norm/outputs",
    }
    for name in per_step:
        assert [s for s, _ in rec.series(name)] == list(range(1, 2 * n + 1)), name
    for name in per_epoch:
        assert [s for s, _ in rec.series(name)] == [n, 2 * n], name
    assert set(rec.values("learning_rate")) == {0.01}
    epochs = {p.step: p.epoch for p in rec.points}
    assert epochs[1] == epochs[n] == 1 and epochs[n + 1] == epochs[2 * n] == 2
    assert all(before <= p.wall_time <= after for p in rec.points)  # Unix time, in the run


def test_layer_norms_combine_into_the_global_norm(digits: DataSplits) -> None:
    # Without BN, the linear layers hold every parameter: their norms add up in squares.
    cfg = make_config({"model": {"batch_norm": {"enabled": False}}, "training": {"epochs": 1}})
    for values in run(cfg, digits).by_step().values():
        if "grad_norm" in values:
            layers = [values[f"grad_norm/{ly}"] for ly in ("hidden1", "hidden2", "outputs")]
            assert math.sqrt(sum(v * v for v in layers)) == pytest.approx(values["grad_norm"])


def test_no_bn_metrics_without_bn_and_no_val_metrics_without_a_validation_split() -> None:
    data = load_dataset(DatasetConfig(name="digits", validation_size=0), seed=0)
    cfg = make_config({"model": {"batch_norm": {"enabled": False}}, "training": {"epochs": 1}})
    rec = run(cfg, data)
    names = {p.name for p in rec.points}
    assert not any(n.startswith("bn/") or n.startswith("val_") for n in names)
    assert rec.result.summary.best_val_accuracy is None
    assert rec.result.summary.final_test_accuracy is not None


def test_epoch_metrics_evaluate_with_running_statistics(digits: DataSplits, tmp_path: Path) -> None:
    from worker.training.checkpoint import load_checkpoint

    path = tmp_path / "model.safetensors"
    rec = run(make_config(), digits, checkpoint_path=path)
    model, _ = load_checkpoint(path)
    with torch.no_grad():
        logits = model(torch.from_numpy(digits.x_test))
    accuracy = float((logits.argmax(1) == torch.from_numpy(digits.y_test)).double().mean())
    loss = float(F.cross_entropy(logits.double(), torch.from_numpy(digits.y_test)))
    assert rec.values("test_accuracy")[-1] == pytest.approx(accuracy, abs=1e-12)
    assert rec.values("test_loss")[-1] == pytest.approx(loss, rel=1e-5)
    bn = model.bn_layers()["hidden1"]
    assert rec.values("bn/hidden1/running_var_mean")[-1] == pytest.approx(
        float(bn.running_var.mean())
    )
    assert rec.values("bn/hidden1/running_mean_abs")[-1] == pytest.approx(
        float(bn.running_mean.abs().mean())
    )


def test_train_loss_is_the_sample_weighted_mean_of_step_losses(digits: DataSplits) -> None:
    cfg = make_config({"training": {"epochs": 1, "batch_size": 100}})
    rec = run(cfg, digits)
    losses = rec.values("loss")
    sizes = [100] * 12 + [58]
    assert len(losses) == len(sizes)
    expected = sum(v * s for v, s in zip(losses, sizes, strict=True)) / sum(sizes)
    assert rec.values("train_loss") == [pytest.approx(expected, rel=1e-12)]
    assert 0.0 <= rec.values("train_accuracy")[0] <= 1.0


def test_summary_agrees_with_the_metrics(digits: DataSplits) -> None:
    rec = run(make_config({"training": {"epochs": 3}, "optimizer": {"learning_rate": 0.2}}), digits)
    s = rec.result.summary
    n = steps_per_epoch(len(digits.y_train), 50, True)
    assert (s.status, s.steps, s.epochs_completed) == ("succeeded", 3 * n, 3)
    assert s.final_test_accuracy == rec.values("test_accuracy")[-1]
    assert s.best_val_accuracy == max(rec.values("val_accuracy"))
    assert s.final_loss == rec.values("train_loss")[-1]
    assert s.diverged_at_step is None and s.diverged_metric is None
    assert s.max_grad_norm == max(rec.values("grad_norm"))
    assert s.max_grad_norm_step == max(rec.series("grad_norm"), key=lambda sv: sv[1])[0]
    assert s.duration_s > 0
    assert s.samples_per_s == pytest.approx(3 * len(digits.y_train) / s.duration_s, rel=1e-9)
    assert rec.result.device == "cpu" and not rec.result.checkpoint_written
    assert s.final_test_accuracy > 0.8  # the seed's BN network learns digits in 3 epochs


def test_log_every_steps_thins_step_metrics_only(digits: DataSplits) -> None:
    rec = run(make_config({"training": {"log_every_steps": 4}}), digits)
    n = steps_per_epoch(len(digits.y_train), 50, True)
    assert [s for s, _ in rec.series("loss")] == list(range(4, 2 * n + 1, 4))
    assert [s for s, _ in rec.series("test_accuracy")] == [n, 2 * n]


def test_on_metrics_batches_hold_complete_steps(digits: DataSplits) -> None:
    rec = run(make_config({"training": {"epochs": 2}}), digits, max_pending_steps=7)
    assert len(rec.batches) > 4
    full = {*STEP_METRICS, "grad_norm/hidden1", "grad_norm/hidden2", "grad_norm/outputs"}
    seen: set[int] = set()
    for batch in rec.batches:
        steps = {p.step for p in batch}
        assert not steps & seen, "a step spread over two batches"
        seen |= steps
        for step in steps:
            assert full <= {p.name for p in batch if p.step == step}
        assert [p.step for p in batch] == sorted(p.step for p in batch)
    assert seen == set(range(1, rec.result.summary.steps + 1))


def test_determinism_same_seed_same_metrics(digits: DataSplits) -> None:
    def values(seed: int) -> list[tuple[str, int, int, float]]:
        cfg = make_config({"training": {"seed": seed, "epochs": 1}, "clipping": {"mode": "value"}})
        return [(p.name, p.step, p.epoch, p.value) for p in run(cfg, digits).points]

    first = values(3)
    assert first == values(3)
    assert first != values(4)


def test_max_steps_mid_epoch_and_at_an_epoch_end(digits: DataSplits) -> None:
    n = steps_per_epoch(len(digits.y_train), 50, True)
    rec = run(make_config({"training": {"epochs": 5, "max_steps": n + 3}}), digits)
    s = rec.result.summary
    assert (s.status, s.steps, s.epochs_completed) == ("succeeded", n + 3, 1)
    assert [s for s, _ in rec.series("test_accuracy")] == [n, n + 3]  # the partial epoch too
    assert max(p.step for p in rec.points) == n + 3

    rec = run(make_config({"training": {"epochs": 5, "max_steps": n}}), digits)
    assert (rec.result.summary.steps, rec.result.summary.epochs_completed) == (n, 1)
    assert {p.epoch for p in rec.points} == {1}


def test_trailing_batch_of_one_is_dropped_only_with_bn() -> None:
    assert steps_per_epoch(101, 50, batch_norm=True) == 2
    assert steps_per_epoch(101, 50, batch_norm=False) == 3
    assert steps_per_epoch(102, 50, batch_norm=True) == 3
    assert steps_per_epoch(100, 50, batch_norm=True) == 2
    assert steps_per_epoch(1, 50, batch_norm=True) == 0


def test_too_small_a_training_split_is_an_error() -> None:
    data = load_dataset(
        DatasetConfig(
            name="synthetic", validation_size=0, test_size=0.99, synthetic={"samples": 100}
        ),
        seed=0,
    )
    assert len(data.y_train) == 1
    with pytest.raises(ValueError, match="too small"):
        run(make_config(), data)


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "rmsprop"])
def test_every_optimizer_trains(digits: DataSplits, optimizer: str) -> None:
    lr = 0.01 if optimizer == "momentum" else 0.003
    cfg = make_config(
        {"optimizer": {"name": optimizer, "learning_rate": lr}, "training": {"epochs": 2}}
    )
    s = run(cfg, digits).result.summary
    assert s.status == "succeeded" and s.final_test_accuracy is not None
    assert s.final_test_accuracy > 0.7


# ---- divergence ---------------------------------------------------------------------------------

# A deep linear network at a high learning rate blows up within the first ten steps.
EXPLODES = {
    "model": {
        "hidden_layers": [100, 100, 100],
        "activation": "identity",
        "batch_norm": {"enabled": False},
    },
    "optimizer": {"learning_rate": 0.5},
    "training": {"epochs": 3},
}


def test_divergence_is_a_result(digits: DataSplits) -> None:
    rec = run(make_config(EXPLODES), digits)
    s = rec.result.summary
    assert s.status == "diverged" and rec.result.status == "diverged"
    bad = s.diverged_at_step
    assert bad is not None and 2 <= bad <= 20
    assert s.steps == bad and s.epochs_completed == 0
    assert s.final_test_accuracy is None
    steps = rec.by_step()
    # Everything before the bad step is kept, complete; nothing after it is reported.
    assert sorted(steps) == list(range(1, bad + 1))
    assert all(
        math.isfinite(steps[k]["loss"]) and math.isfinite(steps[k]["grad_norm"])
        for k in range(1, bad)
    )
    assert s.diverged_metric in ("loss", "grad_norm")
    assert not math.isfinite(steps[bad][s.diverged_metric])  # the non-finite value is reported
    if s.diverged_metric == "grad_norm":
        assert math.isfinite(steps[bad]["loss"])
    assert s.final_loss == steps[bad]["loss"] or (
        math.isnan(steps[bad]["loss"]) and math.isnan(s.final_loss or 0.0)
    )
    assert not any(p.name in EPOCH_METRICS for p in rec.points)
    # It is the *first* non-finite step: stopping just before it is a clean run.
    before = make_config({**EXPLODES, "training": {"epochs": 3, "max_steps": bad - 1}})
    assert run(before, digits).result.summary.status == "succeeded"


def test_divergence_on_an_unlogged_step_still_reports_it(digits: DataSplits) -> None:
    bad = run(make_config(EXPLODES), digits).result.summary.diverged_at_step
    assert bad is not None
    every = bad + 1  # the bad step is not a logged one
    rec = run(
        make_config({**EXPLODES, "training": {"epochs": 3, "log_every_steps": every}}), digits
    )
    s = rec.result.summary
    assert (s.status, s.diverged_at_step) == ("diverged", bad)
    last = [p for p in rec.points if p.step == bad]
    assert {p.name for p in last} == {"loss", "grad_norm"}
    assert not math.isfinite(next(p.value for p in last if p.name == s.diverged_metric))
    assert max(p.step for p in rec.points) == bad


def test_divergence_mid_epoch_after_earlier_flushes(digits: DataSplits) -> None:
    rec = run(make_config(EXPLODES), digits, max_pending_steps=2)
    s = rec.result.summary
    assert s.status == "diverged" and len(rec.batches) >= 2
    assert max(p.step for p in rec.points) == s.diverged_at_step


# ---- cancellation -------------------------------------------------------------------------------


def test_cancellation_between_flushes_is_prompt(digits: DataSplits) -> None:
    polls = 0

    def should_stop() -> bool:
        nonlocal polls
        polls += 1
        return polls >= 3

    rec = run(
        make_config({"training": {"epochs": 50}}),
        digits,
        should_stop=should_stop,
        max_pending_steps=5,
        flush_every_s=3600,
    )
    assert rec.result.status == "cancelled" and polls == 3
    # Flushes hold 5 steps: the run stopped at the third poll, not one step later, and every
    # step it trained was reported.
    assert rec.result.summary.steps == 15
    assert sorted(rec.by_step()) == list(range(1, 16))
    assert rec.result.summary.epochs_completed == 0
    assert not rec.values("test_accuracy")


def test_cancellation_at_an_epoch_end_keeps_that_epoch(digits: DataSplits, tmp_path: Path) -> None:
    n = steps_per_epoch(len(digits.y_train), 50, True)
    rec = run(
        make_config({"training": {"epochs": 50}}),
        digits,
        should_stop=lambda: True,
        checkpoint_path=tmp_path / "c.safetensors",
        flush_every_s=3600,
    )
    s = rec.result.summary
    assert (s.status, s.steps, s.epochs_completed) == ("cancelled", n, 1)
    assert rec.values("test_accuracy") and s.final_test_accuracy is not None
    assert rec.result.checkpoint_written and (tmp_path / "c.safetensors").exists()


def test_time_based_flushes_poll_should_stop(digits: DataSplits) -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 4

    rec = run(
        make_config({"training": {"epochs": 50}}),
        digits,
        should_stop=should_stop,
        flush_every_s=0.0,
    )
    # flush_every_s=0 flushes (and polls) before every step, the first one included.
    assert rec.result.status == "cancelled" and rec.result.summary.steps == 3
    assert [sorted({p.step for p in b}) for b in rec.batches] == [[1], [2], [3]]


def test_checkpoint_written_each_epoch(digits: DataSplits, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "c.safetensors"
    rec = run(make_config({"training": {"epochs": 1}}), digits, checkpoint_path=path)
    assert rec.result.checkpoint_written and path.exists()
    assert list(path.parent.iterdir()) == [path]  # atomic write leaves no temp file


def test_learning_rate_metric_follows_the_optimizer(digits: DataSplits) -> None:
    cfg = make_config(
        {"optimizer": {"name": "adam", "learning_rate": 0.002}, "training": {"epochs": 1}}
    )
    assert set(run(cfg, digits).values("learning_rate")) == {0.002}


def test_metric_values_are_python_floats(digits: DataSplits) -> None:
    rec = run(make_config({"training": {"epochs": 1, "max_steps": 3}}), digits)
    assert all(
        type(p.value) is float and type(p.step) is int and type(p.epoch) is int for p in rec.points
    )
    assert np.isfinite([p.value for p in rec.points]).all()
