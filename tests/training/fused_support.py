"""Running a fused group next to the solo runs of the same configs, and comparing the two."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.training.support import CPU, Recorded, make_config, run
from worker.training.config import ExperimentConfig
from worker.training.datasets import DataSplits, load_dataset
from worker.training.fused_loop import train_fused
from worker.training.fused_member import Member
from worker.training.result import MetricPoint

# float32 training, one batched kernel instead of K solo kernels: a summation order differs, so
# values agree to rounding (measured: ≤ 1e-6 relative), not bit for bit. Percentile medians sit
# near 0 (BN centres pre-activations), so they are judged against the percentile spread.
RTOL = 1e-5
# A diverging run amplifies every difference by its own growth (×10…×10⁴ per step just before
# it overflows): its last steps before the non-finite one agree to this instead.
RTOL_BLOWUP = 1e-3
BLOWUP_STEPS = 3
# Summary fields that measure time, not training.
TIMING = {"duration_s", "samples_per_s"}

_DATA: dict[int, DataSplits] = {}


def data_for(config: ExperimentConfig) -> DataSplits:
    """The split the solo engine trains on for this seed (loaded once per seed)."""
    seed = config.training.seed
    if seed not in _DATA:
        _DATA[seed] = load_dataset(config.dataset, seed=seed)
    return _DATA[seed]


def configs(base: dict[str, Any], variations: list[dict[str, Any]]) -> list[ExperimentConfig]:
    return [make_config(v, base=make_config(base).model_dump()) for v in variations]


@dataclass
class Fused:
    results: list[Any]
    points: list[list[MetricPoint]]
    batches: list[list[list[MetricPoint]]]


def run_fused(
    cfgs: list[ExperimentConfig],
    *,
    stops: list[Callable[[], bool]] | None = None,
    paths: list[Path | None] | None = None,
    resume: list[Path | None] | None = None,
    **kwargs: Any,
) -> Fused:
    batches: list[list[list[MetricPoint]]] = [[] for _ in cfgs]
    members = [
        Member(
            c,
            data_for(c),
            on_metrics=lambda pts, k=k: batches[k].append(list(pts)),
            should_stop=stops[k] if stops else (lambda: False),
            checkpoint_path=paths[k] if paths else None,
            resume_from=resume[k] if resume else None,
        )
        for k, c in enumerate(cfgs)
    ]
    results = train_fused(members, device=CPU, **kwargs)
    return Fused(results, [[p for b in bs for p in b] for bs in batches], batches)


def run_solo(cfg: ExperimentConfig, **kwargs: Any) -> Recorded:
    return run(cfg, data_for(cfg), **kwargs)


def _scale(values: dict[tuple[str, int], float], key: tuple[str, int]) -> float:
    name, step = key
    if name.startswith("act/") and name.endswith("/p50"):
        layer = name[: -len("p50")]
        spread = abs(values[(layer + "p85", step)] - values[(layer + "p15", step)])
        return max(abs(values[key]), spread)
    return abs(values[key])


def assert_same_metrics(
    solo: list[MetricPoint], fused: list[MetricPoint], diverged_at: int | None = None
) -> float:
    """Same names and steps, values within ``RTOL`` (``RTOL_BLOWUP`` in the last steps before
    ``diverged_at``); returns the worst relative difference."""
    a = {(p.name, p.step): p.value for p in solo}
    b = {(p.name, p.step): p.value for p in fused}
    assert sorted(a) == sorted(b)
    assert len(a) == len(solo) == len(fused)  # no duplicates either
    worst = 0.0
    for key, expected in a.items():
        got = b[key]
        if not math.isfinite(expected):
            assert not math.isfinite(got), key
            continue
        err = abs(got - expected) / max(_scale(a, key), 1e-30) if got != expected else 0.0
        blowup = diverged_at is not None and key[1] > diverged_at - BLOWUP_STEPS
        assert err <= (RTOL_BLOWUP if blowup else RTOL), (key, expected, got)
        worst = max(worst, err)
    return worst


def assert_same_summary(solo: Recorded, fused_result: Any) -> None:
    s, f = solo.result.summary.model_dump(), fused_result.summary.model_dump()
    rtol = RTOL if s["diverged_at_step"] is None else RTOL_BLOWUP
    for field, expected in s.items():
        if field in TIMING:
            continue
        got = f[field]
        if isinstance(expected, float) and isinstance(got, float):
            assert math.isclose(got, expected, rel_tol=rtol), (field, expected, got)
        else:
            assert got == expected, (field, expected, got)
    assert fused_result.checkpoint_written == solo.result.checkpoint_written
