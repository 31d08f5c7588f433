"""The Postgres metric store, through psycopg 3: binary COPY for writes, pages fetched on the
driver's cursor, series from packed points, from the series blocks or from one LATERAL aggregate
per bucket (``postgres_buckets``). Numbers: docs/benchmarks.md and docs/bench-series.md."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from app.db.bucketing import Bucket
from app.db.metric_store import postgres_buckets, postgres_rollups
from app.db.metric_store.interface import Columns, Row, UnknownExperimentError
from app.db.metric_store.portable import PortableMetricStore
from app.db.metric_store.postgres_copy import binary_copy


@contextmanager
def driver_cursor(session: Session, *, binary: bool = False) -> Iterator[Any]:
    """A psycopg cursor inside the session's transaction, for the paths where SQLAlchemy's
    statement and row handling cost more than the query (COPY, large pages, packed series).
    Driver errors come out as SQLAlchemy's (a disconnect also invalidates the pooled
    connection), as the API's 503 handling and the worker's retries expect."""
    connection = session.connection()
    driver = connection.connection.driver_connection
    dialect = session.get_bind().dialect
    try:
        with driver.cursor(binary=binary) as cursor:  # type: ignore[union-attr]
            yield cursor
    except dialect.loaded_dbapi.Error as exc:
        invalidated = dialect.is_disconnect(exc, driver, None)
        if invalidated:
            connection.invalidate(exc)
        raise DBAPIError.instance(None, None, exc, dialect.loaded_dbapi.Error,
                                  connection_invalidated=invalidated) from exc


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


class PostgresMetricStore(PortableMetricStore):
    """``MetricStore`` on Postgres through psycopg 3. Names, step ranges, raw buckets and
    deletions of whole experiments are the portable statements."""

    def write(self, session: Session, experiment_id: uuid.UUID, rows: list[Row]) -> None:
        """Rows as any caller gives them go through psycopg's adapters, so that a value the
        table refuses (a NULL epoch) fails in the database, as SQLAlchemy's error."""
        if rows:
            self._write(session, experiment_id, rows, min(r[1] for r in rows),
                        max(r[1] for r in rows), sorted({r[0] for r in rows}))

    def write_columns(self, session: Session, experiment_id: uuid.UUID,
                      columns: Columns) -> None:
        if columns.name:
            self._write(session, experiment_id, columns, int(columns.step.min()),
                        int(columns.step.max()), sorted(set(columns.name)))

    def _write(self, session: Session, experiment_id: uuid.UUID, batch: Columns | list[Row],
               first: int, last: int, names: list[str]) -> None:
        """Binary COPY in the caller's transaction: straight into ``metric_points`` when every
        step is past the experiment's last stored step (a run appending, the usual case), else
        into the staging table and on with ``INSERT … ON CONFLICT DO NOTHING`` (about 30%
        slower). The series blocks (``postgres_rollups``) are kept true in the same
        transaction."""
        with driver_cursor(session) as cursor:
            found = cursor.execute(_LOCK_LAST_STEP, (experiment_id,)).fetchone()
            if found is None:
                raise UnknownExperimentError(experiment_id)
            if found[0] is None or first > found[0]:
                try:
                    # A savepoint: a batch naming one point twice fails this COPY alone (a
                    # unique violation) and takes the staging path. Looking for repeats here
                    # instead cost more than the COPY's client side.
                    with cursor.connection.transaction():
                        _copy_in(cursor, _COPY, batch, experiment_id)
                    # All new: merged into the blocks, not recomputed.
                    postgres_rollups.merge(cursor, experiment_id, batch if isinstance(
                        batch, Columns) else Columns.of_rows(batch))
                    return
                except psycopg.errors.UniqueViolation:
                    pass
            cursor.execute(_CREATE_STAGE)
            _copy_in(cursor, _COPY_STAGE, batch)
            cursor.execute(_MOVE, (experiment_id,))
            # Some points may have been stored already: the blocks are recomputed from the table.
            postgres_rollups.rebuild(cursor, experiment_id, first, last, names)

    def fetch(self, session: Session, experiment_id: uuid.UUID, after_step: int,
              names: Sequence[str] | None, only_step: int | None,
              limit: int | None) -> list[Row]:
        """The portable query on psycopg's cursor, binary results: SQLAlchemy's result rows
        cost three times the query itself on a 10,000-point page (docs/benchmarks.md)."""
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

    def bucketed(self, session: Session, experiment_id: uuid.UUID, name: str, lo: int, hi: int,
                 n: int) -> list[Bucket]:
        """Packed points and numpy for ranges up to ``SCAN_MAX_SPAN`` steps; beyond, the series
        blocks where they read fewer rows than the points, else one LATERAL aggregate per
        bucket."""
        if hi - lo + 1 <= postgres_buckets.SCAN_MAX_SPAN:
            with driver_cursor(session, binary=True) as cursor:
                return postgres_buckets.packed(cursor, experiment_id, name, lo, hi, n)
        size = postgres_rollups.block_size_for(hi - lo + 1, n)
        if size is not None:
            with driver_cursor(session) as cursor:
                return postgres_rollups.buckets(cursor, experiment_id, name, lo, hi, n, size)
        return postgres_buckets.lateral(session, experiment_id, name, lo, hi, n)

    def delete_after(self, session: Session, experiment_id: uuid.UUID, step: int) -> None:
        super().delete_after(session, experiment_id, step)
        with driver_cursor(session) as cursor:  # the blocks past that step, as the points now are
            postgres_rollups.rebuild(cursor, experiment_id, step + 1)


def _copy_in(cursor: Any, statement: str, batch: Columns | list[Row],
             experiment_id: uuid.UUID | None = None) -> None:
    """COPY the batch (``experiment_id`` first in each row if given): columns as data built by
    numpy (``postgres_copy``: ≈ 0.5 µs a point against ≈ 5 µs through ``write_row``), rows
    through psycopg's adapters."""
    with cursor.copy(statement) as copy:
        if isinstance(batch, Columns):
            copy.write(binary_copy(batch, experiment_id))
            return
        if experiment_id is None:
            copy.set_types(_TYPES)
            for row in batch:
                copy.write_row(row)
        else:
            copy.set_types(["uuid", *_TYPES])
            for row in batch:
                copy.write_row((experiment_id, *row))
