"""Study presets: the seed text's claims as studies on offline data (``digits``), each small
enough for a 2-core machine and, but for clipping-stops-explosion (21), for the default quota
of 20 active experiments. Add one by appending to ``STUDY_PRESETS``; docs/studies.md records
each one's expected and measured outcome."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from worker.training.presets import deep_merge


@dataclass(frozen=True)
class StudyPreset:
    name: str
    description: str
    expected: str
    spec: dict[str, Any]


# 3 × 100 sigmoid units with N(0, 0.01) weights: Ioffe & Szegedy's MNIST net, on digits.
_IOFFE = {
    "dataset": {"name": "digits"},
    "model": {"hidden_layers": [100, 100, 100], "activation": "sigmoid", "init": "normal",
              "init_std": 0.01},
    "optimizer": {"name": "sgd", "learning_rate": 0.5},
    "training": {"epochs": 20, "batch_size": 50},
    "resources": {"device": "cpu"},
}
_BN = {"model.batch_norm.enabled": [False, True]}

STUDY_PRESETS: list[StudyPreset] = [
    StudyPreset(
        "bn-rescues-sigmoid",
        "3x100 sigmoid, N(0, 0.01) init, SGD 0.5: BN off vs on, 8 seeds",
        "without BN the net stays near chance (~0.1); with BN it reaches ~0.9 test accuracy in "
        "every seed pair (Wilcoxon p = 2/2^8 = 0.0078)",
        {"base": _IOFFE, "factors": _BN, "seeds": 8},
    ),
    StudyPreset(
        "bn-higher-learning-rate",
        "2x100 ReLU, He init: BN off/on x learning rate 0.01 / 0.3 / 2.0, 3 seeds",
        "without BN, lr 2.0 diverges; with BN every learning rate trains and 2.0 is no worse "
        "than 0.3: BN widens the usable learning-rate range (a positive interaction at 2.0)",
        {"base": {**_IOFFE, "model": {"hidden_layers": [100, 100], "activation": "relu",
                                      "init": "he_normal"}, "training": {"epochs": 10,
                                                                         "batch_size": 50}},
         "factors": {**_BN, "optimizer.learning_rate": [0.01, 0.3, 2.0]}, "seeds": 3},
    ),
    StudyPreset(
        "bn-init-insensitivity",
        "3x100 tanh, N(0, std) init: BN off/on x init std 0.001 / 0.1 / 1.0, 3 seeds",
        "without BN the final accuracy depends strongly on the init std (tiny weights stall, "
        "large ones saturate); with BN the three stds end close together",
        {"base": {**_IOFFE, "model": {"hidden_layers": [100, 100, 100], "activation": "tanh",
                                      "init": "normal", "init_std": 0.01},
                  "optimizer": {"name": "sgd", "learning_rate": 0.1},
                  "training": {"epochs": 10, "batch_size": 50}},
         "factors": {**_BN, "model.init_std": [0.001, 0.1, 1.0]}, "seeds": 3},
    ),
    StudyPreset(
        "bn-fewer-steps",
        "steps to 90% validation accuracy, 3x100 sigmoid, Xavier init, SGD 0.5: BN off vs on",
        "BN reaches 90% validation accuracy in fewer steps in every seed pair (Ioffe & "
        "Szegedy's '14x fewer steps' came with a 30x higher learning rate; at the same rate "
        "and this scale, expect well under 2x)",
        {"base": {**_IOFFE, "model": {"hidden_layers": [100, 100, 100], "activation": "sigmoid",
                                      "init": "xavier_normal"},
                  "training": {"epochs": 30, "batch_size": 50}},
         "factors": _BN, "seeds": 8,
         "response": {"metric": "steps_to", "of": "val_accuracy", "threshold": 0.9}},
    ),
    StudyPreset(
        "clipping-stops-explosion",
        "deep ReLU 300-50-50-50-50, SGD lr 1.0, no BN: clipping none / value 1.0 / norm 1.0, "
        "7 seeds (21 members: one over the default quota of 20 on a server)",
        "without clipping the run explodes (diverges) in every seed; clipping by norm trains; "
        "clipping by value keeps it finite but distorts the gradient direction. 7 seeds: with "
        "two contrasts, Holm needs p < 0.025, and 6 of 6 gives only 0.031",
        {"base": {**_IOFFE, "model": {"hidden_layers": [300, 50, 50, 50, 50],
                                      "activation": "relu", "init": "he_normal",
                                      "batch_norm": {"enabled": False}},
                  "optimizer": {"name": "sgd", "learning_rate": 1.0},
                  "training": {"epochs": 10, "batch_size": 50}},
         "factors": {"clipping": [{"mode": "none"}, {"mode": "value", "threshold": 1.0},
                                  {"mode": "norm", "threshold": 1.0}]},
         "seeds": 7},
    ),
    StudyPreset(
        "bn-scale-for-saturating",
        "BN with and without a learned scale (gamma) x activation ReLU / sigmoid, 4 seeds",
        "scale matters little for ReLU and helps sigmoid (the seed: no gamma suits ReLU; "
        "'for any other activation function, add scale: True')",
        {"base": {**_IOFFE, "model": {"hidden_layers": [100, 100, 100], "init": "xavier_normal",
                                      "batch_norm": {"enabled": True}},
                  "optimizer": {"name": "sgd", "learning_rate": 0.1},
                  "training": {"epochs": 10, "batch_size": 50}},
         "factors": {"model.batch_norm.scale": [False, True],
                     "model.activation": ["relu", "sigmoid"]}, "seeds": 4},
    ),
    StudyPreset(
        "bn-replaces-input-standardization",
        "dataset.standardize off/on x BN off/on, 2x100 sigmoid, SGD 0.1, 4 seeds",
        "without BN, unstandardized inputs (digits' 0-16 pixels) hurt; with BN on the first "
        "hidden layer standardizing makes little difference (a negative interaction)",
        {"base": {**_IOFFE, "model": {"hidden_layers": [100, 100], "activation": "sigmoid",
                                      "init": "xavier_normal"},
                  "optimizer": {"name": "sgd", "learning_rate": 0.1},
                  "training": {"epochs": 10, "batch_size": 50}},
         "factors": {"dataset.standardize": [False, True], **_BN}, "seeds": 4},
    ),
    StudyPreset(
        "bn-prediction-cost",
        "2x100 ELU, He init: BN off/on, 4 seeds; every member times its prediction (as trained, "
        "BN folded, no BN) at batch 1 and 1024",
        "BN costs prediction time as trained (batch 1 most), and nothing once folded into the "
        "linear layers; the accuracy effect is the response, the µs/sample are the "
        "predict_us_* columns of results.csv and each member's summary.prediction_cost",
        {"base": {**_IOFFE, "model": {"hidden_layers": [100, 100], "activation": "elu",
                                      "init": "he_normal"},
                  "optimizer": {"name": "sgd", "learning_rate": 0.1},
                  "training": {"epochs": 10, "batch_size": 50, "measure_prediction_cost": True}},
         "factors": _BN, "seeds": 4},
    ),
]


class UnknownStudyPresetError(ValueError):
    def __init__(self, name: str) -> None:
        known = ", ".join(p.name for p in STUDY_PRESETS)
        super().__init__(f"unknown study preset {name!r}; known: {known}")


def preset_spec(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The preset's spec (named after it), with ``overrides`` merged over it."""
    for preset in STUDY_PRESETS:
        if preset.name == name:
            return deep_merge({"name": preset.name, **copy.deepcopy(preset.spec)},
                              overrides or {})
    raise UnknownStudyPresetError(name)
