"""The names ``produced_names`` derives from a config are exactly what the engine records."""

from __future__ import annotations

from typing import Any

import pytest

from tests.training.support import make_config, run
from worker.training.datasets import load_dataset
from worker.training.metricnames import layer_names, produced_names
from worker.training.model import MLP

SHAPES: list[dict[str, Any]] = [
    {},  # BN before activations, on the logits too
    {"model": {"batch_norm": {"enabled": False}}},
    {"model": {"hidden_layers": [8, 8, 8], "batch_norm": {"on_output": False,
                                                         "placement": "after_activation"}}},
    {"dataset": {"validation_size": 0}, "clipping": {"mode": "norm"},
     "model": {"activation": "relu"}},
    {"model": {"activation": "identity"}},  # no unit telemetry
    {"model": {"activation": "sigmoid", "batch_norm": {"enabled": False}}},
    {"dataset": {"name": "synthetic", "test_size": 0,
                 "synthetic": {"samples": 200, "features": 5, "classes": 3}},
     "training": {"activation_stats_every_steps": 2}},
]


@pytest.mark.parametrize("shape", SHAPES)
def test_the_engine_records_exactly_the_produced_names(shape: dict[str, Any]) -> None:
    config = make_config({"training": {"epochs": 1, "max_steps": 4}, **shape})
    data = load_dataset(config.dataset, seed=0)
    recorded = run(config, data)
    assert recorded.result.status == "succeeded"
    assert {p.name for p in recorded.points} == set(produced_names(config))
    assert len(produced_names(config)) == len(set(produced_names(config)))


def test_layer_names_are_the_models() -> None:
    config = make_config({"model": {"hidden_layers": [4, 3, 2]}})
    model = MLP(config.model, 10, 3)
    assert layer_names(config) == [name for name, _ in model.layer_items()]
