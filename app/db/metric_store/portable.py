"""The portable metric store: SQLAlchemy Core statements that SQLite (the embedded default) runs
as they are. The Postgres store (``postgres``) inherits what needs no driver-level work."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, case, delete, func, literal, select
from sqlalchemy.dialects import sqlite
from sqlalchemy.orm import Session, aliased

from app.db.bucketing import Bucket
from app.db.metric_store.interface import (
    Columns,
    NameSummary,
    Row,
    RowPage,
    StepRange,
    UnknownExperimentError,
)
from app.db.models import FINITE, Experiment, MetricPoint, MetricRollup


def first_of_each(rows: list[Row]) -> list[Row]:
    """The rows without a repeated (name, step): the first one stays."""
    if len({(r[0], r[1]) for r in rows}) == len(rows):
        return rows
    return list({(r[0], r[1]): r for r in reversed(rows)}.values())[::-1]


def _filters(experiment_id: uuid.UUID, name: str, lo: int | None,
             hi: int | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [MetricPoint.experiment_id == experiment_id,
                                             MetricPoint.name == name]
    if lo is not None:
        conditions.append(MetricPoint.step >= lo)
    if hi is not None:
        conditions.append(MetricPoint.step <= hi)
    return conditions


class PortableMetricStore:
    """``MetricStore`` in plain SQL: a multi-row ``INSERT … ON CONFLICT DO NOTHING``, keyset
    pages, and series as one ``GROUP BY`` scan of the range."""

    def write(self, session: Session, experiment_id: uuid.UUID, rows: list[Row]) -> None:
        locked = select(Experiment.id).where(Experiment.id == experiment_id).with_for_update()
        if session.scalar(locked) is None:  # (SQLite has no FOR UPDATE: its writers take turns)
            raise UnknownExperimentError(experiment_id)
        session.execute(sqlite.insert(MetricPoint).on_conflict_do_nothing(), [
            {"experiment_id": experiment_id, "name": name, "step": step, "epoch": epoch,
             "value": value, "kind": kind, "wall_time": wall_time}
            for name, step, epoch, value, kind, wall_time in first_of_each(rows)
        ])

    def write_columns(self, session: Session, experiment_id: uuid.UUID,
                      columns: Columns) -> None:
        self.write(session, experiment_id, columns.rows())

    def page(self, session: Session, experiment_id: uuid.UUID, *, after_step: int,
             names: Sequence[str] | None, limit: int) -> RowPage:
        rows = self.fetch(session, experiment_id, after_step, names, None, limit + 1)
        if len(rows) <= limit:
            return RowPage(rows, False)
        cut_step = rows[limit][1]
        kept = [r for r in rows[:limit] if r[1] != cut_step]
        if kept:
            return RowPage(kept, True)
        # One step holds more points than a page: return that whole step, and look past it.
        whole = self.fetch(session, experiment_id, cut_step - 1, names, cut_step, None)
        return RowPage(whole, bool(self.fetch(session, experiment_id, cut_step, names, None, 1)))

    def fetch(self, session: Session, experiment_id: uuid.UUID, after_step: int,
              names: Sequence[str] | None, only_step: int | None,
              limit: int | None) -> list[Row]:
        """Rows past ``after_step`` (only ``only_step``'s, if given), in (step, name) order."""
        query = select(
            MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value,
            MetricPoint.kind, MetricPoint.wall_time,
        ).where(MetricPoint.experiment_id == experiment_id, MetricPoint.step > after_step)
        if names:
            query = query.where(MetricPoint.name.in_(list(names)))
        if only_step is not None:
            query = query.where(MetricPoint.step == only_step)
        query = query.order_by(MetricPoint.step, MetricPoint.name).limit(limit)
        return [tuple(r) for r in session.execute(query)]  # type: ignore[misc]

    def names(self, session: Session, experiment_id: uuid.UUID) -> list[NameSummary]:
        rows = session.execute(
            select(MetricPoint.name, func.count(), func.max(MetricPoint.step))
            .where(MetricPoint.experiment_id == experiment_id)
            .group_by(MetricPoint.name)
            .order_by(MetricPoint.name)
        )
        return [NameSummary(name, int(count), int(last)) for name, count, last in rows]

    def step_range(self, session: Session, experiment_id: uuid.UUID, name: str,
                   from_step: int | None, to_step: int | None,
                   count_cap: int | None) -> StepRange | None:
        # First and last step are index look-ups and a capped count reads at most
        # ``count_cap`` rows: cheap even for a long series.
        where = _filters(experiment_id, name, from_step, to_step)
        counted = select(literal(1)).where(*where)
        if count_cap is not None:
            counted = counted.limit(count_cap)

        # ORDER BY … LIMIT 1, not min()/max(): the planner rewrites those into the same probes
        # only when its statistics say the range is large, and a running experiment's
        # statistics are older than its points (then min() scanned the whole series).
        def edge(order: Any) -> Any:
            return (select(MetricPoint.step).where(*where).order_by(order).limit(1)
                    .scalar_subquery())

        query = select(
            edge(MetricPoint.step), edge(MetricPoint.step.desc()),
            select(func.count()).select_from(counted.subquery()).scalar_subquery(),
        )
        lo, hi, count = session.execute(query).one()
        return StepRange(int(count), int(lo), int(hi)) if count else None

    def raw_buckets(self, session: Session, experiment_id: uuid.UUID, name: str, lo: int,
                    hi: int, n: int) -> list[Bucket]:
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

    def bucketed(self, session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
                 n: int) -> list[Bucket]:
        """One scan of the range, GROUP BY the bucket expression."""
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

        # first/last: one primary-key probe per bucket. A correlated subquery is always run as
        # that probe; a join here may be planned as a scan of the whole series per bucket when
        # the table's statistics are stale (a running experiment), or as extra full scans.
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

    def delete_after(self, session: Session, experiment_id: uuid.UUID, step: int) -> None:
        session.execute(delete(MetricPoint).where(MetricPoint.experiment_id == experiment_id,
                                                  MetricPoint.step > step))

    def delete(self, session: Session, experiment_ids: Sequence[uuid.UUID]) -> None:
        ids = list(experiment_ids)
        session.execute(delete(MetricPoint).where(MetricPoint.experiment_id.in_(ids)))
        # No blocks are kept on SQLite; the table is there all the same (migration 0005).
        session.execute(delete(MetricRollup).where(MetricRollup.experiment_id.in_(ids)))
