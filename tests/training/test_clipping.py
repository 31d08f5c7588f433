"""Clipping by value and by norm against hand-computed gradients, and what it reports."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from worker.training.clipping import NORM_EPS, clip_gradients, decode, summarize
from worker.training.config import ClippingConfig, ModelConfig
from worker.training.datasets import DataSplits
from worker.training.model import MLP

from .support import make_config, run


def _grads() -> list[torch.Tensor]:
    return [
        torch.tensor([[0.5, -2.0, 0.0], [3.0, 0.1, -1.0]]),  # 2 of 6 beyond ±1 (±1 itself is not)
        torch.tensor([-1.5, 0.2]),  # 1 of 2 beyond ±1
    ]


def _numels(grads: list[torch.Tensor]) -> list[int]:
    return [g.numel() for g in grads]


def _params_with(grads: list[torch.Tensor]) -> list[torch.nn.Parameter]:
    """Parameters holding copies of ``grads``, for torch.nn.utils' clipping functions."""
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    return params


def _norm(values: list[float]) -> float:
    return math.sqrt(sum(v * v for v in values))


FLAT = [0.5, -2.0, 0.0, 3.0, 0.1, -1.0, -1.5, 0.2]


def test_clip_by_value_hand_computed() -> None:
    grads = _grads()
    cfg = ClippingConfig(mode="value", threshold=1.0)
    stats = clip_gradients(grads, cfg, measure=True)
    assert torch.equal(grads[0], torch.tensor([[0.5, -1.0, 0.0], [1.0, 0.1, -1.0]]))
    assert torch.equal(grads[1], torch.tensor([-1.0, 0.2]))
    s = summarize(stats, cfg, _numels(grads))
    clipped = [0.5, -1.0, 0.0, 1.0, 0.1, -1.0, -1.0, 0.2]
    assert s.grad_norm[0] == pytest.approx(_norm(FLAT), rel=1e-6)
    assert s.grad_norm_clipped[0] == pytest.approx(_norm(clipped), rel=1e-6)
    assert s.clip_fraction[0] == 3 / 8
    np.testing.assert_allclose(s.param_norms[0], [_norm(FLAT[:6]), _norm(FLAT[6:])], rtol=1e-6)


def test_clip_by_value_equals_tf_clip_by_value_and_torch() -> None:
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(30, 20, generator=g) * 2, torch.randn(20, generator=g)]
    reference = _params_with(grads)
    expected = [torch.clamp(x, -0.7, 0.7) for x in grads]  # tf.clip_by_value, per gradient
    torch.nn.utils.clip_grad_value_(reference, 0.7)
    clip_gradients(grads, ClippingConfig(mode="value", threshold=0.7))
    for got, want, ref in zip(grads, expected, reference, strict=True):
        assert torch.equal(got, want) and torch.equal(got, ref.grad)


def test_clip_fraction_counts_exactly_on_large_tensors() -> None:
    g = torch.Generator().manual_seed(1)
    grads = [torch.randn(300, 784, generator=g), torch.randn(300, generator=g)]
    expected = sum(int((x.abs() > 1.5).sum()) for x in grads) / sum(x.numel() for x in grads)
    cfg = ClippingConfig(mode="value", threshold=1.5)
    s = summarize(clip_gradients(grads, cfg), cfg, _numels(grads))
    assert s.clip_fraction[0] == expected


def test_clip_by_value_without_measuring_still_clips() -> None:
    grads = _grads()
    cfg = ClippingConfig(mode="value", threshold=1.0)
    stats = clip_gradients(grads, cfg, measure=False)
    assert float(torch.cat([g.flatten() for g in grads]).abs().max()) == 1.0
    s = summarize(stats, cfg, _numels(grads))
    assert s.grad_norm[0] == pytest.approx(_norm(FLAT), rel=1e-6)
    assert math.isnan(s.grad_norm_clipped[0]) and math.isnan(s.clip_fraction[0])


def test_clip_by_norm_hand_computed() -> None:
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]  # global norm 5
    cfg = ClippingConfig(mode="norm", threshold=2.0)
    s = summarize(clip_gradients(grads, cfg), cfg, _numels(grads))
    coef = 2.0 / (5.0 + NORM_EPS)
    torch.testing.assert_close(grads[0], torch.tensor([3.0 * coef, 0.0]))
    torch.testing.assert_close(grads[1], torch.tensor([[0.0], [4.0 * coef]]))
    assert s.grad_norm[0] == pytest.approx(5.0)
    assert s.grad_norm_clipped[0] == pytest.approx(2.0, rel=1e-6)
    assert s.clip_fraction[0] == 1.0


def test_clip_by_norm_below_threshold_is_untouched() -> None:
    grads = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0], [4.0]])]
    cfg = ClippingConfig(mode="norm", threshold=10.0)
    s = summarize(clip_gradients(grads, cfg), cfg, _numels(grads))
    assert torch.equal(grads[0], torch.tensor([3.0, 0.0]))
    assert s.grad_norm_clipped[0] == pytest.approx(5.0) and s.clip_fraction[0] == 0.0


def test_clip_by_norm_equals_clip_grad_norm() -> None:
    g = torch.Generator().manual_seed(2)
    grads = [torch.randn(30, 20, generator=g), torch.randn(20, generator=g)]
    reference = _params_with(grads)
    total = torch.nn.utils.clip_grad_norm_(reference, 3.0)  # returns the pre-clip norm
    cfg = ClippingConfig(mode="norm", threshold=3.0)
    s = summarize(clip_gradients(grads, cfg), cfg, _numels(grads))
    for got, ref in zip(grads, reference, strict=True):
        assert torch.equal(got, ref.grad)
    assert s.grad_norm[0] == pytest.approx(float(total), rel=1e-6)


def test_no_clipping_reports_the_norm_twice_and_fraction_zero() -> None:
    grads = _grads()
    cfg = ClippingConfig(mode="none")
    s = summarize(clip_gradients(grads, cfg), cfg, _numels(grads))
    assert torch.equal(grads[0], _grads()[0])
    assert s.grad_norm[0] == s.grad_norm_clipped[0] == pytest.approx(_norm(FLAT), rel=1e-6)
    assert s.clip_fraction[0] == 0.0


def test_decode_is_vectorized_over_steps() -> None:
    cfg = ClippingConfig(mode="value", threshold=1.0)
    rows = np.array([[3.0, 4.0, 1.0, 1.0, 1.0, 2.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    s = decode(rows, cfg, [4, 6], measured=True)
    np.testing.assert_allclose(s.grad_norm, [5.0, 0.0])
    np.testing.assert_allclose(s.grad_norm_clipped, [math.sqrt(2.0), 0.0])
    np.testing.assert_allclose(s.clip_fraction, [5 / 10, 0.0])  # 1 + 4 elements clipped


def test_value_clipping_applies_to_beta_and_gamma_gradients() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate({"hidden_layers": [8], "batch_norm": {"scale": True}})
    model = MLP(cfg, 5, 3)
    x = torch.randn(16, 5)
    loss = F.cross_entropy(model(x) * 1e4, torch.arange(16) % 3)  # huge gradients everywhere
    loss.backward()
    bn_grads = {n: p.grad for n, p in model.named_parameters() if ".bn." in n}
    assert set(bn_grads) == {
        f"layers.{ly}.bn.{p}" for ly in ("hidden1", "outputs") for p in ("beta", "gamma")
    }
    assert all(g is not None and float(g.abs().max()) > 1.0 for g in bn_grads.values())
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    clip_gradients(grads, ClippingConfig(mode="value", threshold=1.0))
    for name, p in model.named_parameters():
        assert p.grad is not None and float(p.grad.abs().max()) <= 1.0, name


def test_engine_reports_clip_fraction_per_mode(digits: DataSplits) -> None:
    for mode, threshold in (("value", 0.05), ("norm", 1.0), ("none", 1.0)):
        cfg = make_config(
            {
                "clipping": {"mode": mode, "threshold": threshold},
                "optimizer": {"learning_rate": 0.1},
                "training": {"epochs": 1},
            }
        )
        rec = run(cfg, digits)
        steps = rec.by_step()
        per_step = [v for v in steps.values() if "clip_fraction" in v]
        assert len(per_step) == rec.result.summary.steps
        fractions = np.array([v["clip_fraction"] for v in per_step])
        before = np.array([v["grad_norm"] for v in per_step])
        after = np.array([v["grad_norm_clipped"] for v in per_step])
        if mode == "value":
            assert ((fractions > 0) & (fractions < 1)).all()
            assert (after < before).all()
        elif mode == "norm":
            assert set(fractions.tolist()) == {0.0, 1.0}  # some steps rescaled, some not
            np.testing.assert_array_equal(fractions == 1.0, before > threshold)
            np.testing.assert_allclose(after, np.minimum(before, threshold), rtol=1e-5)
        else:
            assert (fractions == 0).all() and (after == before).all()
        summary = rec.result.summary
        assert summary.steps_clipped == int((fractions > 0).sum())
        assert summary.mean_clip_fraction == pytest.approx(fractions.mean())
        assert summary.max_grad_norm == pytest.approx(before.max())
