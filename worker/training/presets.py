"""Named presets from the seed text and Ioffe & Szegedy (2015), and the merging rules users rely on.

A preset is a partial config; a user's fields are deep-merged over it, then the whole is validated,
so a user can take ``geron-bn`` and swap only the dataset.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from worker.training.config import ExperimentConfig
from worker.training.datasets import OFFLINE_ALTERNATIVE

PRESETS: dict[str, dict[str, Any]] = {
    "geron-bn": {
        "name": "geron-bn",
        "dataset": {"name": "mnist"},
        "model": {
            "hidden_layers": [300, 100],
            "activation": "elu",
            "init": "he_normal",
            "batch_norm": {
                "enabled": True,
                "decay": 0.99,
                "scale": False,
                "on_output": True,
                "placement": "before_activation",
            },
        },
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "clipping": {"mode": "none"},
        "training": {"epochs": 20, "batch_size": 50},
    },
    "geron-clip": {
        "name": "geron-clip",
        "dataset": {"name": "mnist"},
        "model": {
            "hidden_layers": [300, 50, 50, 50, 50],
            "activation": "relu",
            # The notebook's tf.layers.dense default initializer is Glorot (Xavier) uniform.
            "init": "xavier_uniform",
            "batch_norm": {"enabled": False},
        },
        "optimizer": {"name": "sgd", "learning_rate": 0.01},
        "clipping": {"mode": "value", "threshold": 1.0},
        "training": {"epochs": 20, "batch_size": 200},
    },
    "ioffe-mnist": {
        "name": "ioffe-mnist",
        "dataset": {"name": "mnist"},
        "model": {
            "hidden_layers": [100, 100, 100],
            "activation": "sigmoid",
            "init": "normal",
            "init_std": 0.01,
            "batch_norm": {"enabled": True, "scale": True, "on_output": False},
        },
        "optimizer": {"name": "sgd", "learning_rate": 0.1},
        "clipping": {"mode": "none"},
        "training": {"epochs": 50, "batch_size": 60, "max_steps": 50_000},
    },
}

PRESET_DESCRIPTIONS: dict[str, str] = {
    "geron-bn": "Géron ch. 11: 784-300-100-10 ELU, He init, BN before each activation incl. logits",
    "geron-clip": "Géron ch. 11: 784-300-50-50-50-50-10 ReLU, gradients clipped by value at 1.0",
    "ioffe-mnist": "Ioffe & Szegedy 2015: 3x100 sigmoid, small Gaussian init, BN on hidden layers",
}


def preset_info(name: str) -> dict[str, Any]:
    """A preset's name, description, dataset, and whether that dataset is downloaded on first
    use (and which bundled dataset to use instead offline)."""
    dataset = build_config({}, name).dataset.name
    return {"name": name, "description": PRESET_DESCRIPTIONS[name], "dataset": dataset,
            "needs_download": dataset in OFFLINE_ALTERNATIVE,
            "offline_dataset": OFFLINE_ALTERNATIVE.get(dataset)}


class UnknownPresetError(ValueError):
    def __init__(self, name: str) -> None:
        super().__init__(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
        self.name = name


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``override`` merged in; nested dicts merge, everything else replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise UnknownPresetError(name)
    return copy.deepcopy(PRESETS[name])


# What a preset *is*: its network, optimizer and clipping. Its dataset, training length and
# device may change under its name (geron-bn on digits is still geron-bn).
RECIPE = ("model", "optimizer", "clipping")


def build_config(raw: dict[str, Any], preset: str | None = None) -> ExperimentConfig:
    """Validate ``raw`` (optionally over a named preset) into a full, normalized config. When
    ``raw`` changes the preset's recipe and names nothing, the name says so: "geron-bn, modified"
    (a run without BN must not pass for geron-bn in a comparison)."""
    if not preset:
        return ExperimentConfig.model_validate(raw)
    base = preset_dict(preset)
    config = ExperimentConfig.model_validate(deep_merge(base, raw))
    if "name" not in raw:
        original = ExperimentConfig.model_validate(base)
        if any(getattr(config, part) != getattr(original, part) for part in RECIPE):
            config.name = f"{config.name}, modified"
    return config


def apply_assignments(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply CLI ``--set a.b.c=value`` assignments; values parse as JSON, else stay strings."""
    result = copy.deepcopy(raw)
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {assignment!r}")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = result
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
            node = child
        node[leaf] = value
    return result
