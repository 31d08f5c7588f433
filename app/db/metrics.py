"""Metric points: bulk writes from the worker's sink, keyset-paginated reads for pollers."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.models import FINITE, NAN, NEG_INF, POS_INF, MetricPoint
from worker.training.result import MetricPoint as EnginePoint

_KIND_VALUES = {NAN: math.nan, POS_INF: math.inf, NEG_INF: -math.inf}


def encode_value(value: float) -> tuple[float | None, int]:
    """float → (value column, kind column): non-finite values are kept as a kind, value NULL."""
    if math.isfinite(value):
        return value, FINITE
    if math.isnan(value):
        return None, NAN
    return None, POS_INF if value > 0 else NEG_INF


def decode_value(value: float | None, kind: int) -> float:
    return value if kind == FINITE and value is not None else _KIND_VALUES[kind]


def insert_points(session: Session, experiment_id: uuid.UUID, points: Iterable[EnginePoint]) -> int:
    """Bulk insert; a point already stored (same experiment, name, step) is left as it is."""
    rows = []
    for p in points:
        value, kind = encode_value(p.value)
        rows.append({"experiment_id": experiment_id, "name": p.name, "step": p.step,
                     "epoch": p.epoch, "value": value, "kind": kind, "wall_time": p.wall_time})
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(MetricPoint).on_conflict_do_nothing(), rows)
    return len(rows)


@dataclass(frozen=True)
class PointRow:
    name: str
    step: int
    epoch: int
    value: float
    wall_time: float


def read_page(
    session: Session,
    experiment_id: uuid.UUID,
    *,
    after_step: int = -1,
    names: Sequence[str] | None = None,
    limit: int = 1000,
) -> tuple[list[PointRow], int | None]:
    """Points with step > after_step, ordered by (step, name), never splitting a step.

    Returns (points, next_after_step). Pass next_after_step back as after_step to continue:
    because a page holds whole steps and the worker commits whole steps, polling this way never
    misses or repeats a point. next_after_step is None when nothing new was found.
    """
    base = select(
        MetricPoint.name, MetricPoint.step, MetricPoint.epoch, MetricPoint.value,
        MetricPoint.kind, MetricPoint.wall_time,
    ).where(MetricPoint.experiment_id == experiment_id, MetricPoint.step > after_step)
    if names:
        base = base.where(MetricPoint.name.in_(list(names)))
    rows = session.execute(
        base.order_by(MetricPoint.step, MetricPoint.name).limit(limit + 1)
    ).all()
    if len(rows) > limit:
        cut_step = rows[limit].step
        kept = [r for r in rows[:limit] if r.step != cut_step]
        if not kept:  # one step holds more points than a page: return that whole step
            kept = list(session.execute(
                base.where(MetricPoint.step == cut_step).order_by(MetricPoint.name)
            ).all())
        rows = kept
    points = [PointRow(r.name, r.step, r.epoch, decode_value(r.value, r.kind), r.wall_time)
              for r in rows]
    return points, (points[-1].step if points else None)


@dataclass(frozen=True)
class NameSummary:
    name: str
    count: int
    last_step: int


def names(session: Session, experiment_id: uuid.UUID) -> list[NameSummary]:
    rows = session.execute(
        select(MetricPoint.name, func.count(), func.max(MetricPoint.step))
        .where(MetricPoint.experiment_id == experiment_id)
        .group_by(MetricPoint.name)
        .order_by(MetricPoint.name)
    )
    return [NameSummary(name, int(count), int(last)) for name, count, last in rows]
