"""A run that ends with a dead layer, or at chance after an explosion, says so."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from worker.training.checkpoint import load_training_state, save_checkpoint
from worker.training.collapse import CollapseWatch, format_norm, majority_share
from worker.training.datasets import DataSplits
from worker.training.loop import steps_per_epoch
from worker.training.model import MLP
from worker.training.result import MetricPoint

from .support import make_config, run

LN10 = math.log(10)


def _points(step: int, **values: float) -> list[MetricPoint]:
    return [MetricPoint(name.replace("__", "/"), step, 1, v, 0.0) for name, v in values.items()]


def _epoch_end(step: int, loss: float, accuracy: float) -> list[MetricPoint]:
    return _points(step, val_loss=loss, val_accuracy=accuracy, train_loss=loss,
                   train_accuracy=accuracy)


def test_format_norm() -> None:
    assert [format_norm(v) for v in (27_000.0, 1.3e5, 0.31, 12.5)] == [
        "2.7e4", "1.3e5", "0.31", "12.5"]


def test_majority_share() -> None:
    assert majority_share(np.array([0, 1, 1, 2])) == 0.5


def test_chance_level_after_an_explosion() -> None:
    watch = CollapseWatch(10, chance_accuracy=0.11)
    watch.observe(_points(1, grad_norm=3.0) + _points(2, grad_norm=2.7e4) + _points(3, grad_norm=1))
    watch.observe(_epoch_end(10, LN10 + 0.02, 0.10))
    watch.observe(_epoch_end(20, LN10 - 0.01, 0.12))
    fields = watch.summary_fields("succeeded")
    assert fields["collapsed_at_step"] == 10
    assert fields["collapse_reason"] == (
        "loss stuck at ln(10) with chance accuracy from step 10 after grad norm 2.7e4 at step 2")
    assert watch.summary_fields("diverged")["collapsed_at_step"] is None


def test_no_collapse_without_an_explosion_or_when_it_recovers() -> None:
    calm = CollapseWatch(10, chance_accuracy=0.11)
    calm.observe(_points(1, grad_norm=3.0) + _epoch_end(10, LN10, 0.1))
    assert calm.collapse() is None  # slow to start is not collapsed
    recovered = CollapseWatch(10, chance_accuracy=0.11)
    recovered.observe(_points(1, grad_norm=5e4) + _epoch_end(10, LN10, 0.1))
    recovered.observe(_epoch_end(20, 1.2, 0.6))
    assert recovered.collapse() is None
    # A loss near ln(10) with real accuracy is not chance level either.
    odd = CollapseWatch(10, chance_accuracy=0.11)
    odd.observe(_points(1, grad_norm=5e4) + _epoch_end(10, LN10, 0.5))
    assert odd.collapse() is None


def test_a_dead_layer_counts_only_if_it_stays_dead() -> None:
    watch = CollapseWatch(10, chance_accuracy=0.11)
    watch.observe(_points(1, grad_norm=40.0, units__hidden1__dead=0.2, units__hidden2__dead=1.0))
    watch.observe(_points(5, grad_norm=2.7e4, units__hidden1__dead=0.5, units__hidden2__dead=0.9))
    watch.observe(_points(6, grad_norm=1.0, units__hidden1__dead=1.0, units__hidden2__dead=1.0))
    watch.observe(_points(9, units__hidden1__dead=1.0, units__hidden2__dead=1.0))
    fields = watch.summary_fields("succeeded")
    # hidden2's first all-dead streak ended at step 5; both layers are dead from step 6 on.
    assert fields["collapsed_at_step"] == 6
    assert fields["collapse_reason"] == "all units of hidden1 dead after grad norm 2.7e4 at step 5"
    assert (fields["peak_dead_units"], fields["peak_dead_units_step"],
            fields["peak_dead_units_layer"]) == (1.0, 1, "hidden2")
    assert fields["peak_saturated_units"] is None


def test_state_survives_a_json_round_trip() -> None:
    watch = CollapseWatch(10, chance_accuracy=0.11)
    watch.observe(_points(3, grad_norm=2e4, units__hidden1__saturated=1.0))
    watch.observe(_epoch_end(10, LN10, 0.1))
    copy = CollapseWatch(10, chance_accuracy=0.11)
    copy.load_state_dict(json.loads(json.dumps(watch.state_dict())))
    assert copy.state_dict() == watch.state_dict()
    assert copy.summary_fields("succeeded") == watch.summary_fields("succeeded")


def _dead_start(tmp_path: Path, cfg_raw: dict[str, object], data: DataSplits) -> Path:
    """A checkpoint at step 0 whose hidden2 is all dead: no probe input lifts it above 0."""
    path = tmp_path / "dead.safetensors"
    cfg = make_config(cfg_raw)
    first = run(cfg, data, checkpoint_path=path, flush_every_s=0.0, should_stop=lambda: True)
    assert first.result.status == "cancelled"
    model = MLP(cfg.model, data.n_features, data.n_classes)
    state = load_training_state(path, model)
    with torch.no_grad():
        model.layers["hidden2"].linear.bias.fill_(-1e3)  # type: ignore[union-attr]
    save_checkpoint(path, model, cfg, state)
    return path


@pytest.mark.parametrize("every_k", [None, 7])
def test_a_constructed_all_dead_net_reports_its_collapse(
    tmp_path: Path, digits: DataSplits, every_k: int | None
) -> None:
    raw: dict[str, object] = {
        "model": {"activation": "relu", "batch_norm": {"enabled": False}},
        "optimizer": {"learning_rate": 0.1},
        "training": {"epochs": 2, "activation_stats_every_steps": every_k,
                     "measure_prediction_cost": False},
    }
    path = _dead_start(tmp_path, raw, digits)
    rec = run(make_config(raw), digits, resume_from=path)
    summary = rec.result.summary
    assert summary.status == "succeeded"
    first_probe = every_k or steps_per_epoch(len(digits.y_train), 50, False)
    assert summary.collapsed_at_step == first_probe
    norm, step = max(  # the largest norm up to the collapse
        (p.value, p.step) for p in rec.points if p.name == "grad_norm" and p.step <= first_probe)
    assert summary.collapse_reason == (
        f"all units of hidden2 dead after grad norm {format_norm(norm)} at step {step}")
    assert set(rec.values("units/hidden2/dead")) == {1.0}
    assert summary.peak_dead_units == 1.0 and summary.peak_dead_units_layer == "hidden2"


def test_a_healthy_run_has_no_collapse(digits: DataSplits) -> None:
    cfg = make_config({"training": {"epochs": 1, "measure_prediction_cost": False}})
    summary = run(cfg, digits).result.summary
    assert summary.collapsed_at_step is None and summary.collapse_reason is None
