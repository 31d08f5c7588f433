"""Buckets of a metric series computed with numpy from the raw points.

The same buckets as the SQL shapes of the metric stores (``app.db.metric_store``: ``bucket =
(step - lo) * n // span``; per bucket: step bounds, first/last finite value, finite
min/max/mean, count, non-finite count). On Postgres a range of up to
``postgres_buckets.SCAN_MAX_SPAN`` steps is fetched as one packed binary value and bucketed
here: the database then only scans the index, which costs about a third of aggregating 20,000
points in SQL (see docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# One point as ``int8send(step) || float8send(value) || int2send(kind)`` packs it: big-endian.
PACKED_POINT = np.dtype([("step", ">i8"), ("value", ">f8"), ("kind", ">i2")])


@dataclass(frozen=True)
class Bucket:
    bucket: int
    step_start: int
    step_end: int
    first: float | None
    last: float | None
    min: float | None
    max: float | None
    mean: float | None
    count: int
    nonfinite_count: int


def unpack(packed: bytes | None) -> np.ndarray:
    """Packed points (any order) → a structured array sorted by step."""
    points = np.frombuffer(packed or b"", dtype=PACKED_POINT)
    return points[np.argsort(points["step"], kind="stable")]


def _runs(keys: np.ndarray) -> np.ndarray:
    """Start index of every run of equal values in the sorted ``keys``."""
    if not len(keys):
        return np.zeros(0, dtype=np.intp)
    return np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))


@dataclass(frozen=True)
class Summary:
    """Per group of points (a run of equal keys): numpy columns. Where a group has no finite
    value, vmin/vmax/vsum/first/last are NaN and first_step/last_step are -1."""

    key: np.ndarray
    step_start: np.ndarray
    step_end: np.ndarray
    count: np.ndarray
    finite: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    vsum: np.ndarray
    first_step: np.ndarray
    first: np.ndarray
    last_step: np.ndarray
    last: np.ndarray


def summarize(keys: np.ndarray, step: np.ndarray, value: np.ndarray,
              finite: np.ndarray) -> Summary:
    """Group points by ``keys`` (sorted, equal keys adjacent; within a key, points in step
    order) and summarize each group. ``value`` is ignored where ``finite`` is False."""
    starts = _runs(keys)
    ends = np.append(starts[1:], len(keys)) - 1
    ids = keys[starts]
    values, finite_keys, finite_steps = value[finite], keys[finite], step[finite]
    f_starts = _runs(finite_keys)
    f_ends = np.append(f_starts[1:], len(finite_keys)) - 1
    # Where each group with a finite value sits among all groups (both lists are sorted).
    slot = np.searchsorted(ids, finite_keys[f_starts])

    def spread(column: np.ndarray, empty: float) -> np.ndarray:
        out = np.full(len(ids), empty, dtype=column.dtype if len(column) else np.float64)
        out[slot] = column
        return out

    finite_count = np.zeros(len(ids), dtype=np.int64)
    finite_count[slot] = f_ends - f_starts + 1
    have = len(values) > 0
    return Summary(
        key=ids, step_start=step[starts], step_end=step[ends], count=ends - starts + 1,
        finite=finite_count,
        vmin=spread(np.minimum.reduceat(values, f_starts) if have else values, np.nan),
        vmax=spread(np.maximum.reduceat(values, f_starts) if have else values, np.nan),
        vsum=spread(np.add.reduceat(values, f_starts) if have else values, np.nan),
        first_step=spread(finite_steps[f_starts], -1).astype(np.int64),
        first=spread(values[f_starts], np.nan),
        last_step=spread(finite_steps[f_ends], -1).astype(np.int64),
        last=spread(values[f_ends], np.nan),
    )


def _optional(column: np.ndarray, present: np.ndarray) -> list[float | None]:
    return [v if ok else None for v, ok in zip(column.tolist(), present.tolist(), strict=True)]


def aggregate(points: np.ndarray, lo: int, hi: int, n: int, finite_kind: int) -> list[Bucket]:
    """At most ``n`` buckets over [lo, hi] of ``points`` (sorted by step, all inside the range,
    no step twice). ``value`` is ignored where ``kind != finite_kind``."""
    if not len(points):
        return []
    step = points["step"].astype(np.int64)
    # Integer arithmetic, as in SQL: (step - lo) * n fits easily (the span is bounded).
    bucket = (step - lo) * n // (hi - lo + 1)
    s = summarize(bucket, step, points["value"].astype(np.float64),
                  points["kind"] == finite_kind)
    present = s.finite > 0
    mean = np.divide(s.vsum, s.finite, out=np.full(len(s.key), np.nan), where=present)
    counts = s.count.tolist()
    return [
        Bucket(b, st, e, f, la, mi, ma, me, c, c - fc)
        for b, st, e, f, la, mi, ma, me, c, fc in zip(
            s.key.tolist(), s.step_start.tolist(), s.step_end.tolist(),
            _optional(s.first, present), _optional(s.last, present),
            _optional(s.vmin, present), _optional(s.vmax, present), _optional(mean, present),
            counts, s.finite.tolist(), strict=True,
        )
    ]
