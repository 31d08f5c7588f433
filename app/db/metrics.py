"""Metric points: bulk writes from the worker's sink, keyset-paginated reads for pollers.

The points themselves go through the session's metric store (``app.db.metric_store``); this
module turns the engine's points into stored rows and back."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
from sqlalchemy.orm import Session

from app.db.metric_store.interface import (
    Columns,
    NameSummary,
    Row,
    RowPage,
    UnknownExperimentError,
)
from app.db.models import FINITE, NAN, NEG_INF, POS_INF
from app.db.session import metric_store
from worker.training.result import MetricPoint as EnginePoint

__all__ = ["NameSummary", "PointRow", "Row", "RowPage", "UnknownExperimentError", "decode_value",
           "encode_value", "insert_columns", "insert_points", "names", "read_page",
           "read_row_page", "read_rows"]

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
    """Bulk insert; a point already stored (same experiment, name, step) is left as it is, and
    so is the second of two points with the same name and step in one batch. A missing
    experiment raises ``UnknownExperimentError`` with nothing written: the store locks the
    experiment's row first, a check that replaces a per-row foreign key (migration 0004)."""
    rows = [(p.name, p.step, p.epoch, *encode_value(p.value), p.wall_time) for p in points]
    if rows:
        metric_store(session).write(session, experiment_id, rows)
    return len(rows)


def insert_columns(session: Session, experiment_id: uuid.UUID, name: Sequence[str],
                   step: Sequence[int], epoch: Sequence[int], value: Sequence[float],
                   wall_time: Sequence[float]) -> int:
    """``insert_points`` for points given column by column (the metric writer's form): no
    Python object a point on the way to the store. Values as the engine gave them, NaN and
    ±inf included (stored as ``encode_value`` says); every column must be complete (the
    engine's points are)."""
    if not name:
        return 0
    raw = np.array(value, np.float64)
    finite = np.isfinite(raw)
    kind = np.where(finite, FINITE, np.where(np.isnan(raw), NAN,
                                             np.where(raw > 0, POS_INF, NEG_INF)))
    columns = Columns(list(name), np.array(step, np.int64), np.array(epoch, np.int64),
                      np.where(finite, raw, np.nan), kind.astype(np.int16),
                      np.array(wall_time, np.float64))
    metric_store(session).write_columns(session, experiment_id, columns)
    return len(name)


class PointRow(NamedTuple):
    name: str
    step: int
    epoch: int
    value: float
    wall_time: float


def read_row_page(
    session: Session,
    experiment_id: uuid.UUID,
    *,
    after_step: int = -1,
    names: Sequence[str] | None = None,
    limit: int = 1000,
) -> RowPage:
    """``read_page``'s points as stored: (name, step, epoch, value, kind, wall_time) tuples,
    ``value`` None unless ``kind`` is FINITE, for callers that encode points themselves; and
    ``has_more``: the page was cut, so the next one has points already (a poller asks again at
    once instead of waiting)."""
    return metric_store(session).page(session, experiment_id, after_step=after_step,
                                      names=names, limit=limit)


def read_rows(
    session: Session,
    experiment_id: uuid.UUID,
    *,
    after_step: int = -1,
    names: Sequence[str] | None = None,
    limit: int = 1000,
) -> list[Row]:
    """``read_row_page``'s rows alone."""
    return read_row_page(session, experiment_id, after_step=after_step, names=names,
                         limit=limit).rows


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
    rows = read_rows(session, experiment_id, after_step=after_step, names=names, limit=limit)
    points = [PointRow(name, step, epoch, decode_value(value, kind), wall_time)
              for name, step, epoch, value, kind, wall_time in rows]
    return points, (points[-1].step if points else None)


def names(session: Session, experiment_id: uuid.UUID) -> list[NameSummary]:
    return metric_store(session).names(session, experiment_id)
