"""Ioffe & Szegedy's Figure 1 telemetry: percentiles of each layer's pre-activation input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.evaluation import activation_percentiles, probe_inputs
from worker.training.loop import steps_per_epoch, train
from worker.training.model import MLP
from worker.training.result import MetricPoint

CPU = torch.device("cpu")


def cfg(bn: bool, **training: object) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": {
                "hidden_layers": [24, 12],
                "activation": "sigmoid",
                "init": "normal",
                "init_std": 0.1,
                "batch_norm": {"enabled": bn},
            },
            "optimizer": {"learning_rate": 0.1},
            "training": {"epochs": 2, "batch_size": 64, **training},
        }
    )


@pytest.fixture(scope="module")
def data() -> DataSplits:
    return load_dataset(ExperimentConfig().dataset, seed=42)


def act(points: list[MetricPoint]) -> dict[tuple[str, int], float]:
    return {(p.name, p.step): p.value for p in points if p.name.startswith("act/")}


@pytest.mark.parametrize("bn", [True, False])  # the same positions with and without BN
def test_every_layer_every_epoch(data: DataSplits, bn: bool) -> None:
    points: list[MetricPoint] = []
    train(cfg(bn), data, device=CPU, on_metrics=points.extend)
    per_epoch = steps_per_epoch(len(data.y_train), 64, bn)
    expected = {
        (f"act/{layer}/{p}", per_epoch * e)
        for layer in ("hidden1", "hidden2", "outputs")
        for p in ("p15", "p50", "p85")
        for e in (1, 2)
    }
    assert set(act(points)) == expected
    for (name, step), value in act(points).items():
        if name.endswith("p15"):
            assert value <= act(points)[(name[:-3] + "p50", step)]
            assert act(points)[(name[:-3] + "p50", step)] <= act(points)[(name[:-3] + "p85", step)]


def test_every_k_steps_without_duplicates(data: DataSplits) -> None:
    points: list[MetricPoint] = []
    train(cfg(True, activation_stats_every_steps=5), data, device=CPU, on_metrics=points.extend)
    per_epoch = steps_per_epoch(len(data.y_train), 64, True)
    steps = sorted({s for (n, s) in act(points) if n == "act/hidden1/p50"})
    want = sorted({s for s in range(5, 2 * per_epoch + 1, 5)} | {per_epoch, 2 * per_epoch})
    assert steps == want
    keys = [(p.name, p.step) for p in points]
    assert len(keys) == len(set(keys))


def test_values_are_the_quantiles_of_the_pre_activations(data: DataSplits) -> None:
    torch.manual_seed(0)
    config = cfg(True)
    model = MLP(config.model, data.n_features, data.n_classes).eval()
    probe = torch.from_numpy(probe_inputs(data))
    got = activation_percentiles(model, probe).numpy()
    with torch.no_grad():
        layers = model.layer_items()
        z1 = layers[0][1].pre_activation(probe)
        h1 = layers[0][1](probe)
        z2 = layers[1][1].pre_activation(h1)
    for row, z in ((0, z1), (1, z2)):
        want = np.quantile(z.numpy().ravel(), [0.15, 0.5, 0.85])
        np.testing.assert_allclose(got[row], want, rtol=1e-5, atol=1e-6)
    assert probe.shape[0] == min(1024, len(data.y_val))


def test_divergence_drops_later_percentiles(data: DataSplits) -> None:
    bad = ExperimentConfig.model_validate(
        {
            "dataset": {"name": "digits"},
            "model": {"hidden_layers": [64, 32], "batch_norm": {"enabled": False}},
            "optimizer": {"learning_rate": 10.0},
            "training": {"epochs": 3, "batch_size": 32, "activation_stats_every_steps": 1},
        }
    )
    points: list[MetricPoint] = []
    result = train(bad, data, device=CPU, on_metrics=points.extend, flush_every_s=60)
    assert result.status == "diverged"
    assert max(s for (_, s) in act(points)) <= result.summary.diverged_at_step
