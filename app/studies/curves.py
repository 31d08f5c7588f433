"""Learning curves of a study: per cell, on one shared step grid, the mean across seeds with a
95% band, min and max, and how many members each bucket has. Built on the series bucketing
(``app.db.series``): each member is bucketed on the same grid, then cells aggregate bucket
means across their seeds."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from app.studies.grid import Cell

BAND = "Student t 95% interval of the mean across seeds (bucket means)"


def bucket_bounds(bucket: int, lo: int, hi: int, points: int) -> tuple[int, int]:
    """Steps of one bucket of ``bucket = (step − lo) · points // span`` (as app.db.series)."""
    span = hi - lo + 1
    start = lo + math.ceil(bucket * span / points)
    return start, min(hi, lo + math.ceil((bucket + 1) * span / points) - 1)


def band(values: Sequence[float]) -> tuple[float | None, float | None]:
    n = len(values)
    if n < 2:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    sem = float(np.std(arr, ddof=1) / math.sqrt(n))
    if sem == 0:
        mean = float(arr.mean())
        return mean, mean
    low, high = stats.t.interval(0.95, n - 1, loc=float(arr.mean()), scale=sem)
    return float(low), float(high)


def aggregate(cells: Sequence[Cell], factor_names: Sequence[str],
              member_buckets: Sequence[tuple[int, dict[int, float | None]]],
              lo: int, hi: int, points: int) -> list[dict[str, Any]]:
    """``member_buckets``: (cell index, {bucket: that member's mean in it}) per member."""
    per_cell: dict[int, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for cell_index, buckets in member_buckets:
        for b, value in buckets.items():
            if value is not None and math.isfinite(value):
                per_cell[cell_index][b].append(value)
    out = []
    for cell in cells:
        rows = []
        for b, values in sorted(per_cell[cell.index].items()):
            low, high = band(values)
            start, end = bucket_bounds(b, lo, hi, points)
            rows.append({"bucket": b, "step_start": start, "step_end": end,
                         "mean": float(np.mean(values)), "ci_low": low, "ci_high": high,
                         "min": float(np.min(values)), "max": float(np.max(values)),
                         "members": len(values)})
        out.append({"index": cell.index,
                    "levels": dict(zip(factor_names, cell.labels, strict=True)),
                    "buckets": rows})
    return out
