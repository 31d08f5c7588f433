"""app.db.series (both metric stores) on SQLite and Postgres, against a Python reference.

Random series with non-contiguous steps, planted finite spikes (up and down) and NaN/±inf: the
SQL buckets must have the reference's boundaries, counts, finite extremes and first/last finite
values, and every planted spike must survive as some bucket's max (or min).
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass

import pytest
from sqlalchemy.orm import Session

from app.db import experiments, metrics, series
from app.db.metric_store import postgres_buckets, postgres_rollups
from app.db.series import Bucket
from worker.training.result import MetricPoint

N = 50  # buckets asked for in most cases
NAME = "grad_norm/hidden1"


@dataclass
class Planted:
    steps: list[int]
    values: dict[int, float]
    spikes_up: list[int]
    spikes_down: list[int]


def new_experiment(session: Session) -> uuid.UUID:
    row, created = experiments.create(session, config={"name": "series"}, tags=[])
    assert created
    return row.id


def make_series(seed: int, length: int, spread: int = 1) -> Planted:
    """A random walk on non-contiguous steps with spikes and non-finite values planted in it;
    ``spread`` multiplies the gaps between steps."""
    rng = random.Random(seed)
    step = rng.randrange(0, 1000)
    steps = []
    for _ in range(length):
        steps.append(step)
        step += rng.choice((1, 1, 1, 2, 3, 7, 40)) * spread
    values: dict[int, float] = {}
    level = 0.0
    for s in steps:
        level += rng.gauss(0, 1)
        values[s] = level
    spikes_up: list[int] = []
    spikes_down: list[int] = []
    if length >= 3:
        picks = rng.sample(steps, min(length, 3 + length // 200))
        for i, s in enumerate(picks):
            magnitude = 1e6 * (1 + rng.random()) * (i + 1)
            if i % 2:
                values[s] = -magnitude
                spikes_down.append(s)
            else:
                values[s] = magnitude
                spikes_up.append(s)
        planted = set(picks)
        others = [s for s in steps if s not in planted]
        for s in rng.sample(others, min(len(others), 2 + length // 100)):
            values[s] = rng.choice((math.nan, math.inf, -math.inf))
    return Planted(steps, values, spikes_up, spikes_down)


def store(session: Session, experiment_id: uuid.UUID, planted: Planted, name: str = NAME) -> None:
    points = [MetricPoint(name, s, 1, planted.values[s], 0.0) for s in planted.steps]
    metrics.insert_points(session, experiment_id, points)
    session.commit()


def reference(
    values: dict[int, float], n: int, from_step: int | None = None, to_step: int | None = None
) -> list[Bucket]:
    """The documented contract, point by point in Python."""
    steps = sorted(
        s
        for s in values
        if (from_step is None or s >= from_step) and (to_step is None or s <= to_step)
    )
    if not steps:
        return []
    lo, hi = steps[0], steps[-1]
    span = hi - lo + 1
    grouped: dict[int, list[int]] = {}
    for s in steps:
        grouped.setdefault((s - lo) * n // span, []).append(s)
    out = []
    for b, members in sorted(grouped.items()):
        finite = [values[s] for s in members if math.isfinite(values[s])]
        out.append(
            Bucket(
                bucket=b,
                step_start=members[0],
                step_end=members[-1],
                first=finite[0] if finite else None,
                last=finite[-1] if finite else None,
                min=min(finite) if finite else None,
                max=max(finite) if finite else None,
                mean=math.fsum(finite) / len(finite) if finite else None,
                count=len(members),
                nonfinite_count=len(members) - len(finite),
            )
        )
    return out


def assert_same(got: list[Bucket], want: list[Bucket]) -> None:
    assert [(b.bucket, b.step_start, b.step_end) for b in got] == [
        (b.bucket, b.step_start, b.step_end) for b in want
    ]
    for g, w in zip(got, want, strict=True):
        assert (g.count, g.nonfinite_count) == (w.count, w.nonfinite_count), (g, w)
        assert (g.first, g.last, g.min, g.max) == (w.first, w.last, w.min, w.max), (g, w)
        if w.mean is None:
            assert g.mean is None, (g, w)
        else:
            assert g.mean == pytest.approx(w.mean, rel=1e-9, abs=1e-6), (g, w)
        assert g.nonfinite_count <= g.count


CASES = [
    (0, 1),
    (1, N - 1),
    (2, N),
    (3, N + 1),
    (4, 2 * N + 7),
    (5, 997),
    (6, 10_000),
]


def check_against_reference(session: Session, seed: int, length: int, spread: int = 1) -> None:
    planted = make_series(seed, length, spread)
    experiment_id = new_experiment(session)
    store(session, experiment_id, planted)
    rng = random.Random(seed)
    lo, hi = planted.steps[0], planted.steps[-1]
    ranges: list[tuple[int | None, int | None]] = [(None, None)]
    a, b = sorted(rng.randint(lo, hi) for _ in range(2))
    ranges += [(a, b), (a, None), (None, b), (hi, hi), (lo - 5, lo)]
    for n in (N, 7, 1, 5000):
        for from_step, to_step in ranges:
            want = reference(planted.values, n, from_step, to_step)
            got = series.series(
                session, experiment_id, NAME, points=n, from_step=from_step, to_step=to_step,
                raw_if_small=False,
            )  # fmt: skip
            assert_same(got, want)
            assert len(got) <= n


@pytest.mark.parametrize(("seed", "length"), CASES)
def test_buckets_match_the_reference(session: Session, seed: int, length: int) -> None:
    check_against_reference(session, seed, length)


@pytest.mark.parametrize("shape", ["default", "blocks-64", "blocks-4096", "lateral"])
def test_long_step_ranges_match_the_reference(
    session: Session, monkeypatch: pytest.MonkeyPatch, shape: str
) -> None:
    """A few thousand points over millions of steps (steps far apart). Postgres picks its query
    by the range's width; ``SCAN_MAX_SPAN = 0`` forces the long-range ones for every width,
    and the block size (``postgres_rollups``: None means per-bucket LATERAL probes) is forced too,
    so each query shape meets the reference on the same data."""
    if shape != "default":
        monkeypatch.setattr(postgres_buckets, "SCAN_MAX_SPAN", 0)
        size = int(shape.split("-")[1]) if shape.startswith("blocks") else None
        monkeypatch.setattr(postgres_rollups, "block_size_for", lambda span, n: size)
    check_against_reference(session, 7, 3_000, spread=997)
    check_against_reference(session, 8, N + 1)
    check_against_reference(session, 9, 2_000, spread=3)  # dense: whole blocks in buckets


@pytest.mark.parametrize(("seed", "length"), [(11, 3_000), (12, 10_000)])
def test_every_planted_spike_is_a_bucket_extreme(session: Session, seed: int, length: int) -> None:
    planted = make_series(seed, length)
    assert planted.spikes_up and planted.spikes_down
    experiment_id = new_experiment(session)
    store(session, experiment_id, planted)
    for n in (1, 10, 100, 1000):
        buckets = series.series(session, experiment_id, NAME, points=n)
        assert len(buckets) <= n
        alone = 0
        for spikes, extreme in ((planted.spikes_up, max), (planted.spikes_down, min)):
            for s in spikes:
                holder = next(b for b in buckets if b.step_start <= s <= b.step_end)
                # Spikes outgrow everything else: a bucket's extreme is its largest spike.
                mates = [
                    planted.values[t] for t in spikes if holder.step_start <= t <= holder.step_end
                ]
                got = holder.max if extreme is max else holder.min
                assert got == extreme(mates), (n, s)
                alone += len(mates) == 1
        if n >= 1000:  # spikes far apart in buckets: each one is some bucket's max or min
            assert alone == len(planted.spikes_up) + len(planted.spikes_down)
            maxima, minima = {b.max for b in buckets}, {b.min for b in buckets}
            assert all(planted.values[s] in maxima for s in planted.spikes_up)
            assert all(planted.values[s] in minima for s in planted.spikes_down)
        assert sum(b.count for b in buckets) == length
        nonfinite = sum(not math.isfinite(v) for v in planted.values.values())
        assert sum(b.nonfinite_count for b in buckets) == nonfinite > 0


def test_deterministic(session: Session) -> None:
    planted = make_series(21, 5_000)
    experiment_id = new_experiment(session)
    store(session, experiment_id, planted)
    for n in (3, 333, 500):
        first = series.series(session, experiment_id, NAME, points=n)
        second = series.series(session, experiment_id, NAME, points=n)
        assert first == second
        assert first == series.series(session, experiment_id, NAME, points=n)


@pytest.mark.parametrize("length", [1, N - 1, N])
def test_raw_points_when_the_range_holds_no_more_than_asked(session: Session, length: int) -> None:
    planted = make_series(31 + length, length)
    experiment_id = new_experiment(session)
    store(session, experiment_id, planted)
    buckets = series.series(session, experiment_id, NAME, points=N)
    assert [b.step_start for b in buckets] == planted.steps
    lo, span = planted.steps[0], planted.steps[-1] - planted.steps[0] + 1
    for b, s in zip(buckets, planted.steps, strict=True):
        v = planted.values[s]
        assert b.step_end == s and b.count == 1
        assert b.bucket == (s - lo) * N // span
        if math.isfinite(v):
            assert (b.first, b.last, b.min, b.max, b.mean, b.nonfinite_count) == (v, v, v, v, v, 0)
        else:
            assert (b.first, b.last, b.min, b.max, b.mean) == (None,) * 5
            assert b.nonfinite_count == 1
    # One more point than asked for: bucketed, not raw.
    more = series.series(session, experiment_id, NAME, points=max(1, length - 1))
    if length > 1:
        assert sum(b.count for b in more) == length and len(more) <= length - 1


def test_a_bucket_of_only_non_finite_points(session: Session) -> None:
    experiment_id = new_experiment(session)
    values = {s: float(s) for s in range(1, 21)}
    values.update({6: math.nan, 7: math.inf, 8: -math.inf, 9: math.nan, 10: math.nan})
    values[3] = math.nan  # bucket 0 keeps finite first/last around it
    values[1] = math.inf  # ... and its first finite value is step 2's
    metrics.insert_points(
        session, experiment_id, [MetricPoint("loss", s, 1, v, 0.0) for s, v in values.items()]
    )
    session.commit()
    buckets = series.series(session, experiment_id, "loss", points=4)
    assert [(b.step_start, b.step_end, b.count) for b in buckets] == [
        (1, 5, 5), (6, 10, 5), (11, 15, 5), (16, 20, 5),
    ]  # fmt: skip
    first, nan_bucket = buckets[0], buckets[1]
    assert (first.first, first.last, first.min, first.max) == (2.0, 5.0, 2.0, 5.0)
    assert first.mean == pytest.approx((2 + 4 + 5) / 3)
    assert first.nonfinite_count == 2
    assert (nan_bucket.first, nan_bucket.last, nan_bucket.min, nan_bucket.max) == (None,) * 4
    assert nan_bucket.mean is None
    assert nan_bucket.nonfinite_count == nan_bucket.count == 5
    assert_same(buckets, reference(values, 4))


def test_other_metrics_and_experiments_do_not_leak_in(session: Session) -> None:
    a, b = new_experiment(session), new_experiment(session)
    planted = make_series(41, 300)
    store(session, a, planted)
    store(session, a, make_series(42, 300), name="loss")
    store(session, b, make_series(43, 300))
    assert_same(series.series(session, a, NAME, points=N), reference(planted.values, N))
    assert series.series(session, a, "missing", points=N) == []
    assert series.series(session, uuid.uuid4(), NAME, points=N) == []


def test_fixed_grid_for_comparisons(session: Session) -> None:
    """lo/hi fix the grid: a shorter series lands on the same bucket indices as a longer one."""
    experiment_id = new_experiment(session)
    values = {s: float(s % 17) for s in range(1, 101)}
    metrics.insert_points(
        session, experiment_id, [MetricPoint("loss", s, 1, v, 0.0) for s, v in values.items()]
    )
    session.commit()
    for n, counts in ((10, [40, 40, 20]), (40, [10] * 10), (400, [1] * 100)):
        got = series.series(
            session, experiment_id, "loss", points=n, raw_if_small=False, lo=1, hi=400
        )
        assert [b.count for b in got] == counts
        assert all((b.step_start - 1) * n // 400 == b.bucket for b in got)
        assert all((b.step_end - 1) * n // 400 == b.bucket for b in got)
