"""Metric points: bulk writes from the worker's sink, keyset-paginated reads for pollers."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import psycopg
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import rollups
from app.db.models import FINITE, NAN, NEG_INF, POS_INF, Experiment, MetricPoint
from app.db.session import driver_cursor, uses_psycopg
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


class UnknownExperimentError(LookupError):
    """Points were sent for an experiment that does not exist (or no longer does)."""


def insert_points(session: Session, experiment_id: uuid.UUID, points: Iterable[EnginePoint]) -> int:
    """Bulk insert; a point already stored (same experiment, name, step) is left as it is, and
    so is the second of two points with the same name and step in one batch.

    The experiment's row is locked first (writers of one experiment take turns; the sink's
    heartbeat takes the same lock), and a missing experiment raises ``UnknownExperimentError``
    with nothing written: this check replaces a per-row foreign key (migration 0004).

    On Postgres through psycopg 3 the points go in by COPY (see ``_copy_points``); elsewhere
    (SQLite, other drivers) by a multi-row ``INSERT … ON CONFLICT DO NOTHING``.
    """
    rows = [(p.name, p.step, p.epoch, *encode_value(p.value), p.wall_time) for p in points]
    if not rows:
        return 0
    if uses_psycopg(session):
        _copy_points(session, experiment_id, rows)
        return len(rows)
    dialect = session.get_bind().dialect
    locked = select(Experiment.id).where(Experiment.id == experiment_id).with_for_update()
    if session.scalar(locked) is None:  # (SQLite has no FOR UPDATE: its writers take turns)
        raise UnknownExperimentError(experiment_id)
    insert = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    session.execute(insert(MetricPoint).on_conflict_do_nothing(), [
        {"experiment_id": experiment_id, "name": name, "step": step, "epoch": epoch,
         "value": value, "kind": kind, "wall_time": wall_time}
        for name, step, epoch, value, kind, wall_time in _first_of_each(rows)
    ])
    return len(rows)


def _first_of_each(rows: list[Row]) -> list[Row]:
    """The rows without a repeated (name, step): the first one stays."""
    if len({(r[0], r[1]) for r in rows}) == len(rows):
        return rows
    return list({(r[0], r[1]): r for r in reversed(rows)}.values())[::-1]


# Writers of one experiment take turns on its row (the sink's heartbeat takes the same lock):
# then a point past the experiment's last stored step cannot be stored already, and such points
# are copied straight into the table. Others (a retried batch, a resumed run, a batch naming a
# point twice) go through a staging table, since COPY has no ON CONFLICT. The stage is per
# connection; ON COMMIT DELETE ROWS empties it at commit, and DELETE … RETURNING empties it for
# a second batch in the same transaction. ``ordinal`` numbers the rows as they came, so that of
# two rows with the same name and step the first is kept.
# One round trip: lock the experiment's row (no row: no such experiment) and read its last
# stored step. Not max(step): the planner turns that into this one-row probe only when its
# statistics say the experiment has many points, and a running experiment's are older than
# its points.
_LOCK_LAST_STEP = (
    "SELECT (SELECT step FROM metric_points WHERE experiment_id = e.id "
    "ORDER BY step DESC LIMIT 1) FROM experiments e WHERE e.id = %s FOR NO KEY UPDATE OF e"
)
_COLUMNS = "name, step, epoch, value, kind, wall_time"
_TYPES = ["text", "int8", "int4", "float8", "int2", "float8"]
_COPY = f"COPY metric_points (experiment_id, {_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_STAGE = "normlab_metric_stage"
_CREATE_STAGE = (
    f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (name text, step bigint, epoch integer, "
    "value double precision, kind smallint, wall_time double precision, "
    "ordinal bigint GENERATED ALWAYS AS IDENTITY) ON COMMIT DELETE ROWS"
)
_COPY_STAGE = f"COPY {_STAGE} ({_COLUMNS}) FROM STDIN (FORMAT BINARY)"
_MOVE = (
    f"WITH moved AS (DELETE FROM {_STAGE} RETURNING *) "
    f"INSERT INTO metric_points (experiment_id, {_COLUMNS}) "
    f"SELECT DISTINCT ON (name, step) %s, {_COLUMNS} FROM moved ORDER BY name, step, ordinal "
    "ON CONFLICT DO NOTHING"
)

Row = tuple[str, int, int, float | None, int, float]


def _copy_points(session: Session, experiment_id: uuid.UUID, rows: list[Row]) -> None:
    """Binary COPY in the caller's transaction: straight into ``metric_points`` when every step
    is past the experiment's last stored step (a run appending, the usual case), else into the
    staging table and on with ``INSERT … ON CONFLICT DO NOTHING`` (about 30% slower). The
    series blocks (``app.db.rollups``) are kept up to date in the same transaction."""
    with driver_cursor(session) as cursor:
        found = cursor.execute(_LOCK_LAST_STEP, (experiment_id,)).fetchone()
        if found is None:
            raise UnknownExperimentError(experiment_id)
        if found[0] is None or min(r[1] for r in rows) > found[0]:
            try:
                # A savepoint: a batch naming one point twice fails this COPY alone (a unique
                # violation) and takes the staging path. Looking for repeats here instead
                # cost more than the COPY's client side.
                with cursor.connection.transaction(), cursor.copy(_COPY) as copy:
                    copy.set_types(["uuid", *_TYPES])
                    for row in rows:
                        copy.write_row((experiment_id, *row))
                rollups.merge(cursor, experiment_id, rows)  # all new: merged, not recomputed
                return
            except psycopg.errors.UniqueViolation:
                pass
        cursor.execute(_CREATE_STAGE)
        with cursor.copy(_COPY_STAGE) as copy:
            copy.set_types(_TYPES)
            for row in rows:
                copy.write_row(row)
        cursor.execute(_MOVE, (experiment_id,))
        # Some points may have been stored already: the blocks are recomputed from the table.
        rollups.rebuild(cursor, experiment_id, min(r[1] for r in rows), max(r[1] for r in rows),
                        sorted({r[0] for r in rows}))


class PointRow(NamedTuple):
    name: str
    step: int
    epoch: int
    value: float
    wall_time: float


class RowPage(NamedTuple):
    """A page of stored rows, and whether points past its last step exist already."""

    rows: list[Row]
    has_more: bool


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
    fetch = _fetch_driver if uses_psycopg(session) else _fetch_orm
    rows = fetch(session, experiment_id, after_step, names, None, limit + 1)
    if len(rows) <= limit:
        return RowPage(rows, False)
    cut_step = rows[limit][1]
    kept = [r for r in rows[:limit] if r[1] != cut_step]
    if kept:
        return RowPage(kept, True)
    # One step holds more points than a page: return that whole step, and look past it.
    whole = fetch(session, experiment_id, cut_step - 1, names, cut_step, None)
    return RowPage(whole, bool(fetch(session, experiment_id, cut_step, names, None, 1)))


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


def _fetch_orm(session: Session, experiment_id: uuid.UUID, after_step: int,
               names: Sequence[str] | None, only_step: int | None,
               limit: int | None) -> list[Row]:
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


def _fetch_driver(session: Session, experiment_id: uuid.UUID, after_step: int,
                  names: Sequence[str] | None, only_step: int | None,
                  limit: int | None) -> list[Row]:
    """The same query on psycopg's cursor, binary results: SQLAlchemy's result rows cost three
    times the query itself on a 10,000-point page (docs/benchmarks.md)."""
    sql = [f"SELECT {_COLUMNS} FROM metric_points WHERE experiment_id = %s AND step > %s"]
    params: list[object] = [experiment_id, after_step]
    if names:
        # One name as "=": the primary key then yields the points in step order (no sort).
        sql.append("AND name = %s" if len(names) == 1 else
                   f"AND name IN ({', '.join(['%s'] * len(names))})")
        params += list(names)
    if only_step is not None:
        sql.append("AND step = %s")
        params.append(only_step)
    sql.append("ORDER BY step, name")
    if limit is not None:
        sql.append("LIMIT %s")
        params.append(limit)
    with driver_cursor(session, binary=True) as cursor:
        cursor.execute(" ".join(sql), params)
        rows: list[Row] = cursor.fetchall()
    return rows


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
