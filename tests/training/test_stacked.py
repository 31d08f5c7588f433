"""Stacked pieces against their solo counterparts: BN, the model's views, clipping columns."""

from __future__ import annotations

import pytest
import torch

from tests.training.support import make_config
from worker.training.batchnorm import TFBatchNorm
from worker.training.evaluation import PERCENTILES
from worker.training.model import MLP
from worker.training.stacked import StackedMLP
from worker.training.stacked_bn import stacked_batch_norm
from worker.training.stacked_eval import _percentiles, stacked_probe_telemetry
from worker.training.units import probe_telemetry


def _stack(params: list[torch.Tensor | None]) -> torch.Tensor:
    return torch.stack([p.detach() for p in params if p is not None]).double().requires_grad_()


@pytest.mark.parametrize("affine", [(True, False), (True, True), (False, True), (False, False)])
def test_stacked_batch_norm_equals_tf_batch_norm_per_member(affine: tuple[bool, bool]) -> None:
    center, scale = affine
    torch.manual_seed(0)
    decays, epsilons = [0.99, 0.9, 0.5], [1e-3, 1e-2, 1e-5]
    solo = [
        TFBatchNorm(6, decay=d, epsilon=e, center=center, scale=scale)
        for d, e in zip(decays, epsilons, strict=True)
    ]
    for bn in solo:
        for p in bn.parameters():
            p.data.normal_()
    z = torch.randn(3, 20, 6, dtype=torch.float64, requires_grad=True)
    gamma = _stack([bn.gamma for bn in solo]) if scale else None
    beta = _stack([bn.beta for bn in solo]) if center else None
    rm, rv = torch.zeros(3, 6, dtype=torch.float64), torch.ones(3, 6, dtype=torch.float64)
    out = stacked_batch_norm(
        z, gamma, beta, rm, rv, torch.tensor(decays).double(), torch.tensor(epsilons).double()
    )
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    for k, bn in enumerate(solo):
        bn.double()
        zk = z.detach()[k].clone().requires_grad_()
        ok = bn(zk)
        (ok * weights[k]).sum().backward()
        torch.testing.assert_close(out[k], ok)
        assert z.grad is not None and zk.grad is not None
        torch.testing.assert_close(z.grad[k], zk.grad)
        if scale:
            assert gamma is not None and gamma.grad is not None and bn.gamma is not None
            torch.testing.assert_close(gamma.grad[k], bn.gamma.grad)
        if center:
            assert beta is not None and beta.grad is not None and bn.beta is not None
            torch.testing.assert_close(beta.grad[k], bn.beta.grad)
        torch.testing.assert_close(rm[k], bn.running_mean)
        torch.testing.assert_close(rv[k], bn.running_var)


def test_member_models_view_the_stack_and_freeze_when_dropped() -> None:
    cfgs = [make_config({"training": {"seed": s}}) for s in range(3)]
    models = []
    for c in cfgs:
        torch.manual_seed(c.training.seed)
        models.append(MLP(c.model, 64, 10))
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in models]
    stacked = StackedMLP(models)
    for m, state in zip(models, before, strict=True):  # same values, now views
        for k, v in m.state_dict().items():
            assert torch.equal(v, state[k])
    with torch.no_grad():
        stacked.layers[0].weight.add_(1.0)
    frozen = before[1]["layers.hidden1.linear.weight"] + 1
    assert torch.equal(models[1].layers["hidden1"].linear.weight, frozen)
    stacked.keep([0, 2])
    with torch.no_grad():
        stacked.layers[0].weight.add_(1.0)
    frozen = before[1]["layers.hidden1.linear.weight"] + 1
    assert torch.equal(models[1].layers["hidden1"].linear.weight, frozen)
    torch.testing.assert_close(
        models[2].layers["hidden1"].linear.weight.detach(),
        before[2]["layers.hidden1.linear.weight"] + 1 + 1,
    )
    x = torch.randn(2, 5, 64)
    assert stacked.forward(x).shape == (2, 5, 10)


@pytest.mark.parametrize("n", [7, 1001, 18_000])
def test_stacked_percentiles_equal_torch_quantile_exactly(n: int) -> None:
    torch.manual_seed(n)
    rows = torch.randn(3, n)
    rows[1, n // 2] = float("nan")  # quantile gives NaN for such a row
    q = torch.tensor([p for _, p in PERCENTILES])
    expected = torch.stack([torch.quantile(r, q) for r in rows])
    assert torch.equal(_percentiles(rows)[[0, 2]], expected[[0, 2]])
    assert _percentiles(rows)[1].isnan().all() and expected[1].isnan().all()


def test_stacked_batch_norm_with_shared_decay_and_epsilon_takes_torchs_kernel() -> None:
    torch.manual_seed(1)
    solo = [TFBatchNorm(5, decay=0.9, epsilon=1e-3, center=True, scale=True) for _ in range(4)]
    z = torch.randn(4, 16, 5, requires_grad=True)
    gamma = torch.rand(4, 5).add_(0.5).requires_grad_()
    beta = torch.randn(4, 5).requires_grad_()
    rm, rv = torch.zeros(4, 5), torch.ones(4, 5)
    out = stacked_batch_norm(z, gamma, beta, rm, rv, 0.9, 1e-3)
    out.sum().backward()
    for k, bn in enumerate(solo):
        assert bn.gamma is not None and bn.beta is not None
        bn.gamma.data.copy_(gamma.detach()[k])
        bn.beta.data.copy_(beta.detach()[k])
        zk = z.detach()[k].clone().requires_grad_()
        ok = bn(zk)
        ok.sum().backward()
        torch.testing.assert_close(out[k], ok)
        assert z.grad is not None and zk.grad is not None
        torch.testing.assert_close(z.grad[k], zk.grad)
        torch.testing.assert_close(rm[k], bn.running_mean)
        torch.testing.assert_close(rv[k], bn.running_var)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_stacked_probe_telemetry_equals_each_members_solo_telemetry(activation: str) -> None:
    cfgs = [
        make_config({
            "training": {"seed": s},
            "model": {"activation": activation, "init": "normal", "init_std": [0.01, 1.0, 10.0][s]},
        })
        for s in range(3)
    ]
    models = []
    for c in cfgs:
        torch.manual_seed(c.training.seed)
        models.append(MLP(c.model, 64, 10))
    stacked = StackedMLP(models)
    probe = torch.randn(3, 200, 64)
    got = stacked_probe_telemetry(stacked, probe)
    for k, model in enumerate(models):
        expected = probe_telemetry(model, probe[k])
        # The unit fractions exactly (a count over the same comparisons); percentiles closely.
        torch.testing.assert_close(got[k, :, 3], expected[:, 3], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(got[k, :, :3], expected[:, :3], rtol=1e-5, atol=1e-6)
