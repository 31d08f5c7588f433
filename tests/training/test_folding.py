"""BN folded into the linear layers predicts as the unfolded model does in evaluation mode."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from worker.training.checkpoint import load_checkpoint
from worker.training.config import Activation, ModelConfig
from worker.training.datasets import DataSplits
from worker.training.folding import fold_batch_norm, plain_copy
from worker.training.model import MLP

from .support import make_config, run

# Every placement × center × scale combination, with and without BN on the logits.
COMBOS = list(
    itertools.product(["before_activation", "after_activation"], [True, False], [True, False])
)
TOL = {"rtol": 1e-5, "atol": 1e-5}


def _model_config(placement: str, center: bool, scale: bool, on_output: bool = True,
                  activation: Activation = "elu") -> ModelConfig:
    return ModelConfig.model_validate({
        "hidden_layers": [20, 12, 8],
        "activation": activation,
        "batch_norm": {"placement": placement, "center": center, "scale": scale,
                       "on_output": on_output},
    })


@torch.no_grad()
def _randomize(model: MLP, gen: torch.Generator) -> None:
    """Weights, biases, β, γ and moving statistics far from their initial values."""
    for _, layer in model.layer_items():
        if layer.linear.bias is not None:
            layer.linear.bias.normal_(0.0, 0.5, generator=gen)
        bn = layer.bn
        if bn is None:
            continue
        bn.running_mean.normal_(0.0, 2.0, generator=gen)
        bn.running_var.uniform_(0.05, 4.0, generator=gen)
        if bn.beta is not None:
            bn.beta.normal_(0.0, 1.0, generator=gen)
        if bn.gamma is not None:
            bn.gamma.uniform_(0.3, 2.5, generator=gen)


@pytest.mark.parametrize("on_output", [True, False])
@pytest.mark.parametrize(("placement", "center", "scale"), COMBOS)
@pytest.mark.parametrize("activation", ["elu", "relu", "sigmoid"])
def test_random_weights(placement: str, center: bool, scale: bool, on_output: bool,
                        activation: Activation) -> None:
    gen = torch.Generator().manual_seed(7)
    config = _model_config(placement, center, scale, on_output, activation)
    torch.manual_seed(3)
    model = MLP(config, 16, 5)
    _randomize(model, gen)
    model.eval()
    folded = fold_batch_norm(model, config)
    assert folded.bn_layers() == {} and not folded.training
    x = torch.randn(256, 16, generator=gen)
    torch.testing.assert_close(folded(x), model(x), **TOL)


@pytest.mark.parametrize(("placement", "center", "scale"), COMBOS)
def test_trained_weights(placement: str, center: bool, scale: bool, digits: DataSplits,
                         tmp_path: Path) -> None:
    config = make_config({
        # decay 0.9: the moving statistics travel far from 0/1 within one short epoch.
        "model": {"batch_norm": {"placement": placement, "center": center, "scale": scale,
                                 "decay": 0.9}},
        "optimizer": {"name": "momentum", "learning_rate": 0.05},
        "training": {"epochs": 1},
    })
    path = tmp_path / "m.safetensors"
    assert run(config, digits, checkpoint_path=path).result.status == "succeeded"
    model, loaded = load_checkpoint(path)
    folded = fold_batch_norm(model, loaded.model)
    x = torch.from_numpy(digits.x_test)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(folded(x), expected, **TOL)
    assert torch.equal(folded(x).argmax(1), expected.argmax(1))


def test_without_bn_folding_copies_the_model() -> None:
    config = ModelConfig.model_validate({"hidden_layers": [6], "batch_norm": {"enabled": False}})
    model = MLP(config, 4, 3).eval()
    folded = fold_batch_norm(model, config)
    x = torch.randn(10, 4)
    assert torch.equal(folded(x), model(x))


def test_folding_leaves_the_random_stream_alone() -> None:
    config = _model_config("before_activation", True, False)
    model = MLP(config, 8, 3)
    torch.manual_seed(11)
    fold_batch_norm(model, config)
    plain_copy(config, 8, 3)
    after = torch.rand(3)
    torch.manual_seed(11)
    assert torch.equal(torch.rand(3), after)
