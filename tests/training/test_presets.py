"""Named presets, deep merging over them, and the CLI's ``--set`` assignments."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from worker.training.datasets import DataSplits
from worker.training.presets import (
    PRESET_DESCRIPTIONS,
    PRESETS,
    UnknownPresetError,
    apply_assignments,
    build_config,
    deep_merge,
    preset_dict,
)

from .support import run


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config_on_mnist(name: str) -> None:
    cfg = build_config({}, preset=name)
    assert cfg.name == name
    assert cfg.dataset.name == "mnist"
    assert name in PRESET_DESCRIPTIONS


def test_descriptions_cover_exactly_the_presets() -> None:
    assert set(PRESET_DESCRIPTIONS) == set(PRESETS)


def test_geron_bn_is_the_seed_network() -> None:
    cfg = build_config({}, preset="geron-bn")
    m, bn = cfg.model, cfg.model.batch_norm
    assert m.hidden_layers == [300, 100]
    assert (m.activation, m.init) == ("elu", "he_normal")
    assert (bn.enabled, bn.decay, bn.scale, bn.center, bn.on_output) == (
        True,
        0.99,
        False,
        True,
        True,
    )
    assert bn.placement == "before_activation"
    assert (cfg.optimizer.name, cfg.optimizer.learning_rate) == ("sgd", 0.01)
    assert cfg.clipping.mode == "none"
    assert cfg.training.batch_size == 50


def test_geron_clip_is_the_seed_clipping_network() -> None:
    cfg = build_config({}, preset="geron-clip")
    assert cfg.model.hidden_layers == [300, 50, 50, 50, 50]
    assert cfg.model.activation == "relu"
    assert not cfg.model.batch_norm.enabled
    assert (cfg.clipping.mode, cfg.clipping.threshold) == ("value", 1.0)
    assert (cfg.optimizer.learning_rate, cfg.training.batch_size) == (0.01, 200)


def test_ioffe_mnist() -> None:
    cfg = build_config({}, preset="ioffe-mnist")
    assert cfg.model.hidden_layers == [100, 100, 100]
    assert cfg.model.activation == "sigmoid"
    assert cfg.model.init == "normal" and cfg.model.init_std is not None
    assert cfg.model.init_std <= 0.1
    bn = cfg.model.batch_norm
    assert bn.enabled and not bn.on_output
    assert cfg.training.batch_size == 60


def test_dataset_is_swappable_and_the_rest_kept() -> None:
    base = build_config({}, preset="geron-bn")
    cfg = build_config(
        {"dataset": {"name": "digits"}, "training": {"epochs": 3}}, preset="geron-bn"
    )
    assert cfg.dataset.name == "digits"
    assert cfg.training.epochs == 3
    assert cfg.training.batch_size == base.training.batch_size
    assert cfg.model == base.model
    assert cfg.optimizer == base.optimizer


def test_swapped_preset_trains_on_digits(digits: DataSplits) -> None:
    cfg = build_config(
        {"dataset": {"name": "digits"}, "training": {"epochs": 1, "max_steps": 5}},
        preset="geron-bn",
    )
    rec = run(cfg, digits)
    assert rec.result.status == "succeeded"
    assert rec.result.summary.steps == 5


def test_merging_never_mutates_presets() -> None:
    before = copy.deepcopy(PRESETS)
    build_config({"model": {"batch_norm": {"decay": 0.9}}}, preset="geron-bn")
    merged = deep_merge(preset_dict("geron-bn"), {"model": {"hidden_layers": [10]}})
    merged["model"]["batch_norm"]["decay"] = 0.5
    assert before == PRESETS


def test_deep_merge_replaces_lists_and_merges_dicts() -> None:
    merged = deep_merge({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "e": 2})
    assert merged == {"a": {"b": 1, "c": [3]}, "d": 1, "e": 2}


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownPresetError) as info:
        build_config({}, preset="resnet")
    assert info.value.name == "resnet"
    for name in PRESETS:
        assert name in str(info.value)


def test_user_fields_are_still_validated_over_a_preset() -> None:
    with pytest.raises(ValidationError) as info:
        build_config({"optimizer": {"learning_rate": -1}}, preset="geron-clip")
    assert info.value.errors()[0]["loc"] == ("optimizer", "learning_rate")


def test_apply_assignments_parses_json_values_and_nests() -> None:
    raw = apply_assignments(
        {"training": {"epochs": 5}},
        [
            "training.epochs=3",
            "dataset.name=digits",
            "optimizer.learning_rate=1e-3",
            "model.hidden_layers=[10, 20]",
            "model.batch_norm.enabled=false",
            "name=a=b",
        ],
    )
    assert raw == {
        "training": {"epochs": 3},
        "dataset": {"name": "digits"},
        "optimizer": {"learning_rate": 0.001},
        "model": {"hidden_layers": [10, 20], "batch_norm": {"enabled": False}},
        "name": "a=b",
    }
    cfg = build_config(raw, preset="geron-bn")
    assert cfg.model.hidden_layers == [10, 20] and not cfg.model.batch_norm.enabled


def test_apply_assignments_does_not_mutate_its_input() -> None:
    raw = {"training": {"epochs": 5}}
    apply_assignments(raw, ["training.epochs=3"])
    assert raw == {"training": {"epochs": 5}}


@pytest.mark.parametrize("bad", ["epochs", "=3", "training.epochs.x=1"])
def test_apply_assignments_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        apply_assignments({"training": {"epochs": 5}}, [bad])


def test_a_preset_keeps_its_name_only_while_its_recipe_holds() -> None:
    from worker.training.presets import build_config as build

    assert build({"dataset": {"name": "digits"}, "training": {"epochs": 2}}, "geron-bn").name == (
        "geron-bn")
    assert build({"model": {"batch_norm": {"enabled": True}}}, "geron-bn").name == "geron-bn"
    assert build({"model": {"batch_norm": {"enabled": False}}}, "geron-bn").name == (
        "geron-bn, modified")
    assert build({"clipping": {"mode": "norm"}}, "geron-clip").name == "geron-clip, modified"
    assert build({"name": "mine", "optimizer": {"learning_rate": 1.0}}, "geron-bn").name == "mine"
