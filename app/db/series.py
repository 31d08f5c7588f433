"""Downsampled metric series: raw points while a range holds few, else buckets.

Steps in [lo, hi] fall into ``n`` equal-width buckets: ``bucket = (step - lo) * n / span`` in
integer arithmetic. Per bucket: first/last finite value, min, max, mean (finite values only)
and how many points were not finite. A spike is some bucket's max, always. The session's metric
store (``app.db.metric_store``) computes them, each implementation its own fastest way, all
checked against one Python reference (tests/db/test_series.py).
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from app.db.bucketing import Bucket
from app.db.metric_store.interface import StepRange
from app.db.session import metric_store

__all__ = ["Bucket", "StepRange", "series", "step_range"]


def step_range(
    session: Session, experiment_id: uuid.UUID, name: str,
    from_step: int | None = None, to_step: int | None = None, *, count_cap: int | None = None,
) -> StepRange | None:
    """First and last step in the range, and how many points it holds, counting no further than
    ``count_cap`` (enough to choose raw points or buckets)."""
    return metric_store(session).step_range(session, experiment_id, name, from_step, to_step,
                                            count_cap)


def series(
    session: Session, experiment_id: uuid.UUID, name: str, *, points: int,
    from_step: int | None = None, to_step: int | None = None, raw_if_small: bool = True,
    lo: int | None = None, hi: int | None = None, found: StepRange | None = None,
) -> list[Bucket]:
    """Buckets over [from_step, to_step] (default: the whole series).

    ``lo``/``hi`` fix the bucket grid (for aligned comparisons); otherwise it spans the data.
    ``found``: this range's ``step_range`` (counted to at least ``points + 1``), if the caller
    has it already.
    """
    store = metric_store(session)
    if found is None:
        found = store.step_range(session, experiment_id, name, from_step, to_step, points + 1)
    if found is None:
        return []
    lo = found.lo if lo is None else lo
    hi = found.hi if hi is None else hi
    if raw_if_small and found.count <= points:
        return store.raw_buckets(session, experiment_id, name, lo, hi, points)
    return store.bucketed(session, experiment_id, name, lo, hi, points)
