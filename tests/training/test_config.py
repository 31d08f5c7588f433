"""The experiment configuration: seed defaults, bounds, and errors that name the field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from worker.training.config import MAX_HIDDEN_LAYERS, MAX_UNITS, ExperimentConfig


def test_defaults_follow_the_seed() -> None:
    cfg = ExperimentConfig()
    bn = cfg.model.batch_norm
    # tf.contrib.layers.batch_norm as the seed calls it: decay 0.99, epsilon 1e-3, β but no γ.
    assert (bn.enabled, bn.decay, bn.epsilon, bn.center, bn.scale) == (
        True,
        0.99,
        0.001,
        True,
        False,
    )
    assert (bn.placement, bn.on_output) == ("before_activation", True)
    assert cfg.model.hidden_layers == [300, 100]
    assert (cfg.model.activation, cfg.model.init) == ("elu", "he_normal")
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate) == ("sgd", 0.01)
    assert cfg.clipping.threshold == 1.0
    assert (cfg.training.epochs, cfg.training.batch_size, cfg.training.log_every_steps) == (
        20,
        50,
        1,
    )
    assert cfg.dataset.name == "digits"
    assert cfg.resources.device == "auto"


def test_json_round_trip_and_spec_example() -> None:
    example = {
        "name": "bn-elu",
        "dataset": {
            "name": "digits",
            "validation_size": 0.1,
            "test_size": 0.2,
            "standardize": True,
        },
        "model": {
            "hidden_layers": [300, 100],
            "activation": "elu",
            "init": "he_normal",
            "init_std": None,
            "batch_norm": {
                "enabled": True,
                "decay": 0.99,
                "epsilon": 0.001,
                "center": True,
                "scale": False,
                "placement": "before_activation",
                "on_output": True,
            },
        },
        "optimizer": {
            "name": "sgd",
            "learning_rate": 0.01,
            "momentum": 0.0,
            "nesterov": False,
            "weight_decay": 0.0,
        },
        "clipping": {"mode": "value", "threshold": 1.0},
        "training": {
            "epochs": 20,
            "batch_size": 50,
            "seed": 42,
            "max_steps": None,
            "log_every_steps": 1,
        },
        "resources": {"device": "auto"},
    }
    cfg = ExperimentConfig.model_validate_json(json.dumps(example))
    assert ExperimentConfig.model_validate_json(cfg.model_dump_json()) == cfg
    assert cfg.clipping.mode == "value"


def test_split_sizes_may_be_fractions_or_counts() -> None:
    cfg = ExperimentConfig.model_validate({"dataset": {"validation_size": 100, "test_size": 0.25}})
    assert cfg.dataset.validation_size == 100 and isinstance(cfg.dataset.validation_size, int)
    assert cfg.dataset.test_size == 0.25


def test_momentum_optimizer_defaults_to_0_9_unless_set() -> None:
    assert (
        ExperimentConfig.model_validate({"optimizer": {"name": "momentum"}}).optimizer.momentum
        == 0.9
    )
    cfg = ExperimentConfig.model_validate({"optimizer": {"name": "momentum", "momentum": 0.5}})
    assert cfg.optimizer.momentum == 0.5


@pytest.mark.parametrize(
    ("raw", "loc"),
    [
        ({"model": {"hidden_layers": [0]}}, ("model", "hidden_layers", 0)),
        ({"model": {"hidden_layers": [MAX_UNITS + 1]}}, ("model", "hidden_layers", 0)),
        ({"model": {"hidden_layers": [8] * (MAX_HIDDEN_LAYERS + 1)}}, ("model", "hidden_layers")),
        ({"model": {"activation": "swish"}}, ("model", "activation")),
        ({"model": {"init": "normal"}}, ("model", "init_std")),
        ({"model": {"batch_norm": {"decay": 1.0}}}, ("model", "batch_norm", "decay")),
        ({"model": {"batch_norm": {"decay": 0}}}, ("model", "batch_norm", "decay")),
        ({"model": {"batch_norm": {"epsilon": 0.0}}}, ("model", "batch_norm", "epsilon")),
        ({"model": {"batch_norm": {"gamma": True}}}, ("model", "batch_norm", "gamma")),
        ({"training": {"epochs": 0}}, ("training", "epochs")),
        ({"training": {"epochs": 1001}}, ("training", "epochs")),
        ({"training": {"batch_size": 65537}}, ("training", "batch_size")),
        ({"training": {"batch_size": 1}}, ("training", "batch_size")),  # BN needs 2 samples
        ({"training": {"epochs": 2.5}}, ("training", "epochs")),
        ({"optimizer": {"learning_rate": 0}}, ("optimizer", "learning_rate")),
        ({"optimizer": {"learning_rate": 10.5}}, ("optimizer", "learning_rate")),
        ({"optimizer": {"nesterov": True}}, ("optimizer", "nesterov")),
        ({"clipping": {"threshold": 0}}, ("clipping", "threshold")),
        ({"clipping": {"mode": "global"}}, ("clipping", "mode")),
        ({"resources": {"device": "tpu"}}, ("resources", "device")),
        ({"dataset": {"name": "cifar10"}}, ("dataset", "name")),
        ({"dataset": {"validation_size": 0.6, "test_size": 0.5}}, ("dataset", "test_size")),
        ({"bogus": 1}, ("bogus",)),
        ({"model": {"depth": 3}}, ("model", "depth")),
    ],
)
def test_errors_name_the_field(raw: dict[str, Any], loc: tuple[str | int, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate(raw)
    locs = [e["loc"] for e in info.value.errors()]
    assert loc in locs, locs


@pytest.mark.parametrize(
    ("text", "loc"),
    [
        ('{"optimizer": {"learning_rate": NaN}}', ("optimizer", "learning_rate")),
        ('{"clipping": {"threshold": Infinity}}', ("clipping", "threshold")),
        ('{"model": {"batch_norm": {"epsilon": -Infinity}}}', ("model", "batch_norm", "epsilon")),
        ('{"model": {"init": "normal", "init_std": NaN}}', ("model", "init_std")),
        ('{"optimizer": {"weight_decay": NaN}}', ("optimizer", "weight_decay")),
    ],
)
def test_nan_and_infinity_are_rejected_in_json(text: str, loc: tuple[str, ...]) -> None:
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate_json(text)
    assert [e["loc"] for e in info.value.errors()] == [loc]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_python_floats_are_rejected_everywhere(bad: float) -> None:
    for raw in (
        {"optimizer": {"learning_rate": bad}},
        {"model": {"batch_norm": {"decay": bad}}},
        {"clipping": {"threshold": bad}},
        {"optimizer": {"momentum": bad}},
    ):
        with pytest.raises(ValidationError) as info:
            ExperimentConfig.model_validate(raw)
        section, fieldname = next(iter(raw.items()))
        assert info.value.errors()[0]["loc"][0] == section, fieldname
    with pytest.raises(ValidationError) as info:
        ExperimentConfig.model_validate({"dataset": {"test_size": bad}})
    assert all(e["loc"][:2] == ("dataset", "test_size") for e in info.value.errors())


def test_batch_of_one_is_fine_without_batch_norm() -> None:
    cfg = ExperimentConfig.model_validate(
        {"model": {"batch_norm": {"enabled": False}}, "training": {"batch_size": 1}}
    )
    assert cfg.training.batch_size == 1


def test_integral_numbers_are_integers_as_in_json_schema() -> None:
    # JSON Schema's "integer" includes 64.0 (a client serializing floats sends it), so the
    # config takes it; a fraction or a numeric string is still refused.
    config = ExperimentConfig.model_validate(
        {"model": {"hidden_layers": [64.0, 32]}, "training": {"epochs": 2.0}}
    )
    assert config.model.hidden_layers == [64, 32] and config.training.epochs == 2
    assert isinstance(config.training.epochs, int)
    for bad in (2.5, "2"):
        with pytest.raises(ValidationError):
            ExperimentConfig.model_validate({"training": {"epochs": bad}})
