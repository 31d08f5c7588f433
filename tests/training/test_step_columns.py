"""The per-step columns: each declaration works for a solo and a fused step alike, and one new
declaration is all a new per-step metric needs (both loops emit it, under its name)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.training.fused_support import assert_same_metrics, configs, run_fused, run_solo
from worker.training import step_columns
from worker.training.clipping import ClipSummary
from worker.training.step_columns import (
    COLUMNS,
    STEP_METRICS,
    StepColumn,
    StepOutputs,
    decode_columns,
    device_columns,
)


def _outputs(k: int | None) -> StepOutputs:
    """Random step outputs: solo (``k`` None) or ``k`` stacked members."""
    gen = torch.Generator().manual_seed(0)
    lead = () if k is None else (k,)
    return StepOutputs(
        loss=torch.rand(lead, generator=gen),
        logits=torch.randn(*lead, 20, 5, generator=gen),
        labels=torch.randint(0, 5, (*lead, 20), generator=gen),
    )


def test_names_are_unique_and_the_emitted_ones_keep_their_order() -> None:
    names = [c.name for c in COLUMNS]
    assert len(set(names)) == len(names)
    assert STEP_METRICS == (
        "loss",
        "grad_norm",
        "grad_norm_clipped",
        "clip_fraction",
        "learning_rate",
    )


@pytest.mark.parametrize("column", device_columns(), ids=lambda c: c.name)
def test_a_device_column_gives_each_member_its_solo_value(column: StepColumn) -> None:
    assert column.device is not None
    stacked = _outputs(3)
    together = column.device(stacked)
    assert together.shape == (3,)
    for k in range(3):
        alone = column.device(StepOutputs(stacked.loss[k], stacked.logits[k], stacked.labels[k]))
        assert alone.shape == ()
        assert torch.equal(alone, together[k])


def test_correct_counts_matching_argmax() -> None:
    out = StepOutputs(
        torch.tensor(0.0),
        torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]),
        torch.tensor([1, 1, 1]),
    )
    (correct,) = [c for c in COLUMNS if c.name == "correct"]
    assert correct.device is not None and float(correct.device(out)) == 2.0


def test_decoding_reads_the_device_values_clipping_and_learning_rate() -> None:
    n_device = len(device_columns())
    values = np.arange(2 * (n_device + 1), dtype=np.float64).reshape(2, -1)
    clip = ClipSummary(
        grad_norm=np.array([3.0, 4.0]),
        grad_norm_clipped=np.array([1.0, 2.0]),
        clip_fraction=np.array([0.5, 0.0]),
        param_norms=np.zeros((2, 1)),
    )
    out = decode_columns(values, clip, np.array([0.1, 0.2]))
    assert set(out) == {c.name for c in COLUMNS}
    for i, column in enumerate(device_columns()):
        if column.decode is None:
            assert out[column.name].tolist() == values[:, i].tolist()
    assert out["grad_norm"].tolist() == [3.0, 4.0]
    assert out["grad_norm_clipped"].tolist() == [1.0, 2.0]
    assert out["clip_fraction"].tolist() == [0.5, 0.0]
    assert out["learning_rate"].tolist() == [0.1, 0.2]


# A metric that exists only in this test: the largest |logit| of the mini-batch, on the device,
# reported doubled (so both the device function and the decoding are exercised).
EXTRA = StepColumn(
    "logit_abs_max_x2",
    device=lambda out: out.logits.abs().amax(dim=(-2, -1)),
    decode=lambda v: 2.0 * v.device["logit_abs_max_x2"],
)
SMALL_RUN = {"training": {"epochs": 1, "max_steps": 6, "log_every_steps": 2}}


def test_one_declaration_adds_a_metric_to_the_solo_and_the_fused_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Inserted before the clipping-derived columns: the row layout shifts, and must not matter.
    monkeypatch.setattr(step_columns, "COLUMNS", (*COLUMNS[:2], EXTRA, *COLUMNS[2:]))
    cfgs = configs(
        SMALL_RUN,
        [
            {"clipping": {"mode": "value", "threshold": 0.05}},
            {"clipping": {"mode": "norm", "threshold": 0.5}, "training": {"seed": 3}},
        ],
    )
    fused = run_fused(cfgs)
    for cfg, points in zip(cfgs, fused.points, strict=True):
        solo = run_solo(cfg)
        extra = solo.series(EXTRA.name)
        assert [s for s, _ in extra] == [2, 4, 6]
        assert all(v > 0 for _, v in extra)
        assert_same_metrics(solo.points, points)
    # One member: the solo kernels, bit for bit (the extra metric included).
    alone = run_fused(cfgs[:1]).points[0]
    assert [(p.name, p.step, p.value) for p in alone] == [
        (p.name, p.step, p.value) for p in run_solo(cfgs[0]).points
    ]
