"""Postgres series buckets read from the points: packed points bucketed with numpy (ranges up
to ``SCAN_MAX_SPAN`` steps), or one LATERAL aggregate per bucket (longer ranges where the
series blocks of ``postgres_rollups`` would not read fewer rows). Both give the portable
store's buckets exactly (tests/db/test_series.py)."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import BigInteger, cast, func, literal, select, text, true
from sqlalchemy.orm import Session, aliased

from app.db import bucketing
from app.db.bucketing import Bucket
from app.db.models import FINITE, MetricPoint

# Small ranges: the points come back as one packed bytea (18 bytes a point, any order) and
# numpy buckets them. Postgres then only walks the primary key; aggregating in SQL cost three
# times as much (an expression sort, and first/last values need ordered aggregates).
# One metric of one experiment is a primary-key range: never read the whole table (the planner
# may think otherwise on a small table), nor the polling index (it may, with statistics older
# than this run: the row comparison is an index bound only for the key).
_PACKED_SQL = """
    SELECT string_agg(int8send(step) || float8send(coalesce(value, 'NaN'::float8))
                      || int2send(kind), ''::bytea)
    FROM metric_points
    WHERE experiment_id = %(experiment_id)s AND name = %(name)s
      AND (name, step) BETWEEN (%(name)s, %(lo)s) AND (%(name)s, %(hi)s)
"""
SCAN_MAX_SPAN = 200_000  # beyond this many steps, one lateral probe per bucket is cheaper


def packed(cursor: Any, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
           n: int) -> list[Bucket]:
    """``cursor``: a binary one, so that the 360 kB of bytea of 20,000 points are not
    hex-encoded by the server and decoded again here."""
    cursor.execute("SET LOCAL enable_seqscan = off")
    row = cursor.execute(_PACKED_SQL, {"experiment_id": experiment_id, "name": name,
                                       "lo": lo, "hi": hi}).fetchone()
    return bucketing.aggregate(bucketing.unpack(row[0] if row else None), lo, hi, n, FINITE)


def lateral(session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
            n: int) -> list[Bucket]:
    """For each bucket ``i`` of ``generate_series(0, n - 1)``, aggregate its own step range
    ``[lo + ceil(i * span / n), lo + ceil((i + 1) * span / n))`` (exactly the steps whose
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
