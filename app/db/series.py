"""Downsampled metric series computed in SQL (Postgres and SQLite alike).

Steps in [lo, hi] fall into ``n`` equal-width buckets: ``bucket = (step - lo) * n / span`` in
integer arithmetic, which both databases evaluate the same way. Per bucket: first/last finite
value, min, max, mean (finite values only: non-finite points have ``value`` NULL, which SQL
aggregates skip) and how many points were not finite. A spike is some bucket's max, always.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session, aliased

from app.db.models import FINITE, MetricPoint


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


@dataclass(frozen=True)
class StepRange:
    count: int
    lo: int
    hi: int


def step_range(
    session: Session, experiment_id: uuid.UUID, name: str,
    from_step: int | None = None, to_step: int | None = None,
) -> StepRange | None:
    query = select(func.count(), func.min(MetricPoint.step), func.max(MetricPoint.step)).where(
        *_filters(experiment_id, name, from_step, to_step)
    )
    count, lo, hi = session.execute(query).one()
    return StepRange(int(count), int(lo), int(hi)) if count else None


def _filters(experiment_id: uuid.UUID, name: str, lo: int | None, hi: int | None) -> list:
    conditions = [MetricPoint.experiment_id == experiment_id, MetricPoint.name == name]
    if lo is not None:
        conditions.append(MetricPoint.step >= lo)
    if hi is not None:
        conditions.append(MetricPoint.step <= hi)
    return conditions


def raw_buckets(session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
                n: int) -> list[Bucket]:
    """Each point as its own bucket (used when the range holds no more than ``n`` points)."""
    span = hi - lo + 1
    rows = session.execute(
        select(MetricPoint.step, MetricPoint.value, MetricPoint.kind)
        .where(*_filters(experiment_id, name, lo, hi)).order_by(MetricPoint.step)
    )
    buckets = []
    for step, value, kind in rows:
        finite = kind == FINITE
        v = value if finite else None
        buckets.append(Bucket((step - lo) * n // span, step, step, v, v, v, v, v, 1,
                              0 if finite else 1))
    return buckets


def bucketed(session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
             n: int) -> list[Bucket]:
    """At most ``n`` buckets over [lo, hi], aggregated by the database."""
    span = hi - lo + 1
    mp = MetricPoint.__table__
    bucket = ((mp.c.step - literal(lo)) * literal(n) // literal(span)).label("bucket")
    finite_step = case((mp.c.kind == FINITE, mp.c.step))
    inner = (
        select(bucket, mp.c.step, mp.c.value, mp.c.kind, finite_step.label("finite_step"))
        .where(mp.c.experiment_id == experiment_id, mp.c.name == name,
               mp.c.step >= lo, mp.c.step <= hi)
        .subquery()
    )
    agg = (
        select(
            inner.c.bucket,
            func.min(inner.c.step).label("step_start"),
            func.max(inner.c.step).label("step_end"),
            func.min(inner.c.value).label("vmin"),
            func.max(inner.c.value).label("vmax"),
            func.avg(inner.c.value).label("vmean"),
            func.count().label("n"),
            func.sum(case((inner.c.kind != FINITE, 1), else_=0)).label("nonfinite"),
            func.min(inner.c.finite_step).label("first_step"),
            func.max(inner.c.finite_step).label("last_step"),
        )
        .group_by(inner.c.bucket)
        .cte("agg")
    )
    first, last = aliased(MetricPoint), aliased(MetricPoint)

    def point_at(alias: type[MetricPoint], step_col: object) -> object:
        return and_(alias.experiment_id == experiment_id, alias.name == name,
                    alias.step == step_col)

    query = (
        select(agg, first.value.label("first"), last.value.label("last"))
        .outerjoin(first, point_at(first, agg.c.first_step))
        .outerjoin(last, point_at(last, agg.c.last_step))
        .order_by(agg.c.bucket)
    )
    return [
        Bucket(int(r.bucket), int(r.step_start), int(r.step_end), r.first, r.last, r.vmin,
               r.vmax, float(r.vmean) if r.vmean is not None else None, int(r.n),
               int(r.nonfinite or 0))
        for r in session.execute(query)
    ]


def series(
    session: Session, experiment_id: uuid.UUID, name: str, *, points: int,
    from_step: int | None = None, to_step: int | None = None, raw_if_small: bool = True,
    lo: int | None = None, hi: int | None = None,
) -> list[Bucket]:
    """Buckets over [from_step, to_step] (default: the whole series).

    ``lo``/``hi`` fix the bucket grid (for aligned comparisons); otherwise it spans the data.
    """
    found = step_range(session, experiment_id, name, from_step, to_step)
    if found is None:
        return []
    lo = found.lo if lo is None else lo
    hi = found.hi if hi is None else hi
    if raw_if_small and found.count <= points:
        return raw_buckets(session, experiment_id, name, lo, hi, points)
    return bucketed(session, experiment_id, name, lo, hi, points)
