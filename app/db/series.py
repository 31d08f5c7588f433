"""Downsampled metric series computed in SQL (Postgres and SQLite alike).

Steps in [lo, hi] fall into ``n`` equal-width buckets: ``bucket = (step - lo) * n / span`` in
integer arithmetic, which both databases evaluate the same way. Per bucket: first/last finite
value, min, max, mean (finite values only: non-finite points have ``value`` NULL, which SQL
aggregates skip) and how many points were not finite. A spike is some bucket's max, always.

Four shapes give the same buckets (tests/db/test_series.py checks each against one Python
reference): a portable GROUP BY (SQLite); on Postgres, numpy over the packed points of ranges
up to ``SCAN_MAX_SPAN`` steps (``app.db.bucketing``), pre-aggregated blocks plus the points at
each bucket's edges for longer ranges (``app.db.rollups``), and a LATERAL aggregate per bucket
where blocks would not read fewer rows (or are not kept: a driver other than psycopg).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, case, cast, func, literal, select, text, true
from sqlalchemy.orm import Session, aliased

from app.db import bucketing, rollups
from app.db.bucketing import Bucket
from app.db.models import FINITE, MetricPoint
from app.db.session import driver_cursor, uses_psycopg


@dataclass(frozen=True)
class StepRange:
    count: int
    lo: int
    hi: int


def step_range(
    session: Session, experiment_id: uuid.UUID, name: str,
    from_step: int | None = None, to_step: int | None = None, *, count_cap: int | None = None,
) -> StepRange | None:
    """First and last step in the range, and how many points it holds, counting no further than
    ``count_cap`` (enough to choose raw points or buckets). First and last are index look-ups
    and a capped count reads at most ``count_cap`` rows: cheap even for a long series."""
    where = _filters(experiment_id, name, from_step, to_step)
    counted = select(literal(1)).where(*where)
    if count_cap is not None:
        counted = counted.limit(count_cap)
    # First and last step as ORDER BY … LIMIT 1, not min()/max(): the planner rewrites those
    # into the same probes only when its statistics say the range is large, and a running
    # experiment's statistics are older than its points (then min() scanned the whole series).
    def edge(order: Any) -> Any:
        return select(MetricPoint.step).where(*where).order_by(order).limit(1).scalar_subquery()

    query = select(
        edge(MetricPoint.step), edge(MetricPoint.step.desc()),
        select(func.count()).select_from(counted.subquery()).scalar_subquery(),
    )
    lo, hi, count = session.execute(query).one()
    return StepRange(int(count), int(lo), int(hi)) if count else None


def _filters(experiment_id: uuid.UUID, name: str, lo: int | None,
             hi: int | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [MetricPoint.experiment_id == experiment_id,
                                             MetricPoint.name == name]
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
    if session.get_bind().dialect.name == "postgresql":
        if not uses_psycopg(session):  # the blocks and the packed fetch need psycopg
            return _bucketed_lateral(session, experiment_id, name, lo, hi, n)
        if hi - lo + 1 <= SCAN_MAX_SPAN:
            return _bucketed_packed(session, experiment_id, name, lo, hi, n)
        size = rollups.block_size_for(hi - lo + 1, n)
        if size is not None:
            with driver_cursor(session) as cursor:
                return rollups.buckets(cursor, experiment_id, name, lo, hi, n, size)
        return _bucketed_lateral(session, experiment_id, name, lo, hi, n)
    return _bucketed_grouped(session, experiment_id, name, lo, hi, n)


def _bucketed_grouped(session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
                      n: int) -> list[Bucket]:
    """Portable SQL: one scan of the range, GROUP BY the bucket expression."""
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

    # first/last: one primary-key probe per bucket. A correlated subquery is always executed as
    # that probe; a join here may be planned as a scan of the whole series per bucket when the
    # table's statistics are stale (a running experiment), or as extra full scans when zoomed.
    def value_at(step_col: Any, label: str) -> Any:
        at = aliased(MetricPoint)
        return (
            select(at.value)
            .where(at.experiment_id == experiment_id, at.name == name, at.step == step_col)
            .scalar_subquery()
            .label(label)
        )

    query = select(
        agg, value_at(agg.c.first_step, "first"), value_at(agg.c.last_step, "last")
    ).order_by(agg.c.bucket)
    return [
        Bucket(int(r.bucket), int(r.step_start), int(r.step_end), r.first, r.last, r.vmin,
               r.vmax, float(r.vmean) if r.vmean is not None else None, int(r.n),
               int(r.nonfinite or 0))
        for r in session.execute(query)
    ]


# Postgres, small ranges: the points come back as one packed bytea (18 bytes a point, any order)
# and numpy buckets them. Postgres then only walks the primary key; aggregating in SQL cost
# three times as much (an expression sort, and first/last values need ordered aggregates).
# psycopg's own parameter style: it runs on the driver's cursor, to get the bytea in binary.
_PACKED_SQL = """
    SELECT string_agg(int8send(step) || float8send(coalesce(value, 'NaN'::float8))
                      || int2send(kind), ''::bytea)
    FROM metric_points
    WHERE experiment_id = %(experiment_id)s AND name = %(name)s
      AND (name, step) BETWEEN (%(name)s, %(lo)s) AND (%(name)s, %(hi)s)
"""
SCAN_MAX_SPAN = 200_000  # beyond this many steps, one lateral probe per bucket is cheaper


def _bucketed_packed(session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
                     n: int) -> list[Bucket]:
    # One metric of one experiment is a primary-key range: never read the whole table (the
    # planner may think otherwise on a small table), nor the polling index (it may, with
    # statistics older than this run: the row comparison is an index bound only for the key).
    session.execute(text("SET LOCAL enable_seqscan = off"))
    # Binary results: 360 kB of bytea for 20,000 points is not hex-encoded by the server and
    # decoded again here.
    with driver_cursor(session, binary=True) as cursor:
        row = cursor.execute(_PACKED_SQL, {"experiment_id": experiment_id, "name": name,
                                           "lo": lo, "hi": hi}).fetchone()
    return bucketing.aggregate(bucketing.unpack(row[0] if row else None), lo, hi, n, FINITE)


def _bucketed_lateral(session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
                      n: int) -> list[Bucket]:
    """Postgres: for each bucket ``i`` of ``generate_series(0, n - 1)``, aggregate its own step
    range ``[lo + ceil(i * span / n), lo + ceil((i + 1) * span / n))`` (exactly the steps whose
    ``(step - lo) * n // span`` is ``i``) in a LATERAL subquery: one index range scan per bucket,
    no sort or hash of every point (the planner takes an expression of ``step`` for a million
    groups, sorts on disk and JIT-compiles). Edges and first/last finite values are index probes.
    LATERAL fixes the join order, so stale statistics (a running experiment) cannot turn this into
    a scan per bucket of the whole series.
    """
    span = hi - lo + 1
    i = (
        func.generate_series(cast(literal(0), BigInteger), cast(literal(n - 1), BigInteger))
        .table_valued("i")
        .render_derived(name="grid")
    )

    def in_bucket(at: Any) -> list[Any]:
        def edge(k: Any) -> Any:  # the first step of bucket k: lo + ceil(k * span / n)
            return cast(literal(lo), BigInteger) + (
                k * cast(literal(span), BigInteger) + literal(n - 1)
            ) // literal(n)

        return [at.experiment_id == experiment_id, at.name == name,
                at.step >= edge(i.c.i), at.step < edge(i.c.i + 1)]

    mp = aliased(MetricPoint)
    agg = (
        select(
            func.min(mp.value).label("vmin"),
            func.max(mp.value).label("vmax"),
            func.sum(mp.value).label("vsum"),  # sum and count, cheaper than avg()
            func.count().label("n"),
            func.count(mp.value).label("finite"),  # value is NULL exactly when not finite
        )
        .where(*in_bucket(mp))
        .lateral("agg")
    )

    def probe(column: str, finite: bool, last: bool) -> Any:
        at = aliased(MetricPoint)
        step = at.step.desc() if last else at.step
        where = [*in_bucket(at), at.kind == FINITE] if finite else in_bucket(at)
        return (
            select(getattr(at, column)).where(*where).order_by(step).limit(1)
            .correlate(i).scalar_subquery()
        )

    query = (
        select(
            i.c.i.label("bucket"), agg,
            probe("step", False, False).label("step_start"),
            probe("step", False, True).label("step_end"),
            probe("value", True, False).label("first"),
            probe("value", True, True).label("last"),
        )
        .select_from(i.join(agg, true()))
        .where(agg.c.n > 0)
        .order_by(i.c.i)
    )
    session.execute(text("SET LOCAL jit = off"))  # compiling costs more than this query runs
    return [
        Bucket(int(r.bucket), int(r.step_start), int(r.step_end), r.first, r.last, r.vmin,
               r.vmax, float(r.vsum) / r.finite if r.finite else None, int(r.n),
               int(r.n - r.finite))
        for r in session.execute(query)
    ]


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
    if found is None:
        found = step_range(session, experiment_id, name, from_step, to_step,
                           count_cap=points + 1)
    if found is None:
        return []
    lo = found.lo if lo is None else lo
    hi = found.hi if hi is None else hi
    if raw_if_small and found.count <= points:
        return raw_buckets(session, experiment_id, name, lo, hi, points)
    return bucketed(session, experiment_id, name, lo, hi, points)
