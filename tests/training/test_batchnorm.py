"""TFBatchNorm against values computed by hand, and its TF1 parameterization."""

from __future__ import annotations

import pytest
import torch

from worker.training.batchnorm import TFBatchNorm

DECAY, EPS = 0.99, 1e-3


def _batch(n: int = 8, features: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, features, generator=g, dtype=torch.float64) * 3.0 + 2.0).requires_grad_()


def _bn(features: int = 5, **kwargs: bool) -> TFBatchNorm:
    bn = TFBatchNorm(features, decay=DECAY, epsilon=EPS, **kwargs).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in bn.parameters():  # non-trivial γ/β so that they are really applied
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    return bn


def test_training_mode_normalizes_with_batch_statistics() -> None:
    bn = _bn(center=True, scale=True)
    x = _batch()
    y = bn(x)
    xs = x.detach()
    mean = xs.sum(0) / len(xs)
    var = ((xs - mean) ** 2).sum(0) / len(xs)  # biased, as TF (and torch) normalize
    assert bn.gamma is not None and bn.beta is not None
    expected = bn.gamma * (xs - mean) / torch.sqrt(var + EPS) + bn.beta
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_one_update_of_the_moving_averages() -> None:
    bn = _bn()
    x = _batch()
    bn(x)
    xs = x.detach()
    n = len(xs)
    mean = xs.mean(0)
    biased = ((xs - mean) ** 2).sum(0) / n
    unbiased = ((xs - mean) ** 2).sum(0) / (n - 1)
    # TF: moving = decay * moving + (1 - decay) * batch, from moving mean 0 and variance 1.
    torch.testing.assert_close(bn.running_mean, (1 - DECAY) * mean, rtol=0, atol=1e-14)
    # The documented kept difference: torch stores the *unbiased* batch variance.
    torch.testing.assert_close(
        bn.running_var, DECAY * 1.0 + (1 - DECAY) * unbiased, rtol=0, atol=1e-14
    )
    assert not torch.allclose(bn.running_var, DECAY * 1.0 + (1 - DECAY) * biased, rtol=0, atol=1e-9)


def test_decay_is_tf_decay_over_several_updates() -> None:
    bn = _bn()
    x = _batch()
    for _ in range(3):
        bn(x)
    mean = x.detach().mean(0)
    torch.testing.assert_close(bn.running_mean, (1 - DECAY**3) * mean, rtol=0, atol=1e-13)


def test_eval_mode_uses_the_moving_averages_and_does_not_update_them() -> None:
    bn = _bn(center=True, scale=True)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0, 3.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 0.25, 9.0, 2.0]))
    rm, rv = bn.running_mean.clone(), bn.running_var.clone()
    bn.eval()
    x = _batch()
    y = bn(x)
    assert bn.gamma is not None and bn.beta is not None
    expected = bn.gamma * (x.detach() - rm) / torch.sqrt(rv + EPS) + bn.beta
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    assert torch.equal(bn.running_mean, rm) and torch.equal(bn.running_var, rv)
    # No batch dependence at evaluation: one sample alone gives its row of the batch result.
    torch.testing.assert_close(bn(x[:1]), y[:1], rtol=0, atol=0)


def test_epsilon_is_used() -> None:
    x = _batch(features=1)
    x = (x - x.mean()) / x.std(unbiased=False)  # unit biased variance
    y = TFBatchNorm(1, epsilon=0.5, center=False).double()(x)
    torch.testing.assert_close(y, x / (1.0 + 0.5) ** 0.5, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("center", "scale", "names"),
    [
        (True, False, ["beta"]),  # TF's default: β learnable, γ fixed at 1 and not a parameter
        (True, True, ["beta", "gamma"]),
        (False, True, ["gamma"]),
        (False, False, []),
    ],
)
def test_center_and_scale_switch_parameters_like_tf(
    center: bool, scale: bool, names: list[str]
) -> None:
    bn = TFBatchNorm(4, center=center, scale=scale)
    assert [n for n, _ in bn.named_parameters()] == names
    assert (bn.beta is not None, bn.gamma is not None) == (center, scale)
    assert sorted(bn.state_dict()) == sorted([*names, "running_mean", "running_var"])
    if center:
        assert bn.beta is not None and torch.equal(bn.beta, torch.zeros(4))  # β starts at 0
    if scale:
        assert bn.gamma is not None and torch.equal(bn.gamma, torch.ones(4))  # γ starts at 1


def test_scale_false_means_unit_gamma() -> None:
    x = _batch()
    y = TFBatchNorm(5, center=False, scale=False).double()(x)
    var = y.detach().var(0, unbiased=False)
    expected = x.detach().var(0, unbiased=False) / (x.detach().var(0, unbiased=False) + EPS)
    torch.testing.assert_close(var, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(
        y.detach().mean(0), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0
    )


def test_gradients_reach_beta_and_gamma() -> None:
    bn = _bn(center=True, scale=True)
    x = _batch()
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = bn(x)
    (y * upstream).sum().backward()
    assert bn.beta is not None and bn.gamma is not None
    assert bn.beta.grad is not None and bn.gamma.grad is not None
    torch.testing.assert_close(bn.beta.grad, upstream.sum(0), rtol=0, atol=1e-12)
    xs = x.detach()
    x_hat = (xs - xs.mean(0)) / torch.sqrt(xs.var(0, unbiased=False) + EPS)
    torch.testing.assert_close(bn.gamma.grad, (upstream * x_hat).sum(0), rtol=0, atol=1e-12)


def test_extra_repr_names_the_tf_switches() -> None:
    text = repr(TFBatchNorm(3, decay=0.9, epsilon=0.01, center=True, scale=False))
    assert "decay=0.9" in text and "center=True" in text and "scale=False" in text
