"""The seed's fully connected network: layer layout, bias rule, BN placement, initializers."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from worker.training.batchnorm import TFBatchNorm
from worker.training.config import ModelConfig
from worker.training.model import MLP


def _model(n_features: int = 6, n_classes: int = 3, **raw: Any) -> MLP:
    torch.manual_seed(0)
    return MLP(ModelConfig.model_validate(raw), n_features, n_classes).double()


def test_layers_are_named_like_the_seed_scopes() -> None:
    model = _model(784, 10)
    assert list(model.layers) == ["hidden1", "hidden2", "outputs"]
    shapes = [tuple(layer.linear.weight.shape) for _, layer in model.layer_items()]
    assert shapes == [(300, 784), (100, 300), (10, 100)]
    assert list(model.bn_layers()) == ["hidden1", "hidden2", "outputs"]


def test_linear_followed_by_bn_has_no_bias() -> None:
    model = _model(hidden_layers=[5, 4])
    for _, layer in model.layer_items():
        assert layer.bn is not None and layer.linear.bias is None
    names = [n for n, _ in model.named_parameters()]
    assert not any(n.endswith("linear.bias") for n in names)
    assert "layers.hidden1.bn.beta" in names and not any("gamma" in n for n in names)


def test_without_bn_every_linear_has_a_bias() -> None:
    model = _model(hidden_layers=[5, 4], batch_norm={"enabled": False})
    assert model.bn_layers() == {}
    for _, layer in model.layer_items():
        assert layer.linear.bias is not None and torch.equal(
            layer.linear.bias, torch.zeros_like(layer.linear.bias)
        )


def test_on_output_false_keeps_the_logits_plain() -> None:
    model = _model(hidden_layers=[5], batch_norm={"on_output": False})
    out = model.layers["outputs"]
    assert out.bn is None and out.linear.bias is not None
    assert list(model.bn_layers()) == ["hidden1"]


def test_forward_before_activation_matches_hand_computation() -> None:
    model = _model(hidden_layers=[5, 4], activation="elu", batch_norm={"scale": True})
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = x
    for _, layer in model.layer_items():
        bn = layer.bn
        assert isinstance(bn, TFBatchNorm)
        z = F.batch_norm(
            h @ layer.linear.weight.T, None, None, bn.gamma, bn.beta, True, 0.0, bn.epsilon
        )
        h = z if layer is model.layers["outputs"] else F.elu(z)
    torch.testing.assert_close(model(x), h, rtol=0, atol=1e-12)


def test_placement_after_activation() -> None:
    model = _model(
        hidden_layers=[5, 4],
        activation="tanh",
        batch_norm={"placement": "after_activation", "scale": True},
    )
    hidden = [layer for name, layer in model.layer_items() if name != "outputs"]
    for layer in hidden:
        # BN does not follow the linear map directly: the linear layer keeps its bias.
        assert layer.linear.bias is not None
    # The logits have no activation: their BN still directly follows the linear map.
    assert model.layers["outputs"].linear.bias is None
    x = torch.randn(7, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    h = x
    for layer in hidden:
        bn = layer.bn
        assert isinstance(bn, TFBatchNorm)
        a = torch.tanh(F.linear(h, layer.linear.weight, layer.linear.bias))
        h = F.batch_norm(a, None, None, bn.gamma, bn.beta, True, 0.0, bn.epsilon)
    out = model.layers["outputs"]
    assert isinstance(out.bn, TFBatchNorm)
    z = h @ out.linear.weight.T
    logits = F.batch_norm(z, None, None, out.bn.gamma, out.bn.beta, True, 0.0, out.bn.epsilon)
    torch.testing.assert_close(model(x), logits, rtol=0, atol=1e-12)
    # The activation's input is now the plain linear output.
    first = hidden[0]
    torch.testing.assert_close(first.pre_activation(x), first.linear(x), rtol=0, atol=0)


def test_pre_activation_is_the_bn_output_before_activation() -> None:
    model = _model(hidden_layers=[5], activation="sigmoid")
    x = torch.randn(9, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    layer = model.layers["hidden1"]
    z = layer.pre_activation(x)
    torch.testing.assert_close(layer(x), torch.sigmoid(z), rtol=0, atol=0)
    # Normalized by the batch: zero mean, (almost) unit biased variance per unit.
    torch.testing.assert_close(z.mean(0), torch.zeros(5, dtype=torch.float64), rtol=0, atol=1e-12)


def test_eval_mode_is_per_sample_train_mode_is_per_batch() -> None:
    model = _model(hidden_layers=[5])
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    model.train()
    assert not torch.allclose(model(x[:4])[0], model(x)[0])
    model.eval()
    torch.testing.assert_close(model(x[:1]), model(x)[:1], rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("init", "std"),
    [
        ("he_normal", lambda fan_in, fan_out: math.sqrt(2.0 / fan_in)),
        ("he_uniform", lambda fan_in, fan_out: math.sqrt(2.0 / fan_in)),
        ("xavier_normal", lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))),
        ("xavier_uniform", lambda fan_in, fan_out: math.sqrt(2.0 / (fan_in + fan_out))),
        ("lecun_normal", lambda fan_in, fan_out: math.sqrt(1.0 / fan_in)),
        ("normal", lambda fan_in, fan_out: 0.05),
    ],
)
def test_initializers_have_the_right_scale(init: str, std: Any) -> None:
    raw: dict[str, Any] = {"hidden_layers": [400], "init": init, "batch_norm": {"enabled": False}}
    if init == "normal":
        raw["init_std"] = 0.05
    model = _model(300, 200, **raw)
    w = model.layers["hidden1"].linear.weight.detach()
    expected = std(300, 400)
    assert abs(float(w.std()) - expected) < 0.03 * expected
    assert abs(float(w.mean())) < 0.03 * expected
    assert torch.count_nonzero(model.layers["hidden1"].linear.bias) == 0


def test_default_init_keeps_pytorchs() -> None:
    model = _model(hidden_layers=[4], init="default", batch_norm={"enabled": False})
    torch.manual_seed(0)
    reference = torch.nn.Linear(6, 4).double()
    torch.testing.assert_close(
        model.layers["hidden1"].linear.weight, reference.weight, rtol=0, atol=0
    )
    assert torch.count_nonzero(model.layers["hidden1"].linear.bias) > 0


def test_no_hidden_layers_is_a_linear_classifier() -> None:
    model = _model(hidden_layers=[], batch_norm={"enabled": False})
    assert list(model.layers) == ["outputs"]
    assert model(torch.zeros(2, 6, dtype=torch.float64)).shape == (2, 3)
