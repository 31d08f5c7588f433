"""The one query of the hot polling path (``app.api.polled``): an experiment, its tags, and the
caller's API key row, in a single round trip on a connection the caller holds: a SQLAlchemy
connection, or on Postgres a psycopg ``AsyncConnection`` that keeps the event loop free while
the database answers."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection, Select, Text, bindparam, exists, literal, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.engine import make_url

from app.db.models import ApiKey, Experiment, ExperimentTag
from app.db.records import EXPERIMENT_FIELDS, JSON_FIELDS

E, T, K = Experiment.__table__, ExperimentTag.__table__, ApiKey.__table__
_ANY_KEY = ApiKey.__table__.alias("any_key")  # not K: K is joined, and would be correlated
# The record's columns, in ``EXPERIMENT_FIELDS`` order (``ExperimentRecord.from_values``). JSON
# comes as text: the caller compares it unparsed with what it cached, and parses only on change.
_COLUMNS = [
    sql_cast(E.c[name], Text).label(name) if name in JSON_FIELDS else E.c[name]
    for name in EXPERIMENT_FIELDS
]


def _statement(probe_keys: bool) -> Select[Any]:
    """The experiment's row once per tag (ordered as ``tags_of`` orders them), whether any API
    key exists (when that is not known yet), and the caller's key row (when one was sent)."""
    keys_exist = exists(select(_ANY_KEY.c.key_id)) if probe_keys else literal(False)
    return (
        select(
            *_COLUMNS,
            keys_exist.label("keys_exist"),
            T.c.tag,
            K.c.key_hash,
            K.c.owner.label("key_owner"),
            K.c.admin.label("key_admin"),
            K.c.revoked_at.label("key_revoked_at"),
        )
        .select_from(
            E.outerjoin(T, T.c.experiment_id == E.c.id).outerjoin(
                K, K.c.key_id == bindparam("key_id")
            )
        )
        .where(E.c.id == bindparam("experiment_id"))
        .order_by(T.c.tag)
    )


_STATEMENTS = {probe: _statement(probe) for probe in (True, False)}  # built once


def record_values(row: Sequence[Any]) -> tuple[Any, ...]:
    """The experiment's columns of one row, for ``ExperimentRecord.from_values``."""
    return tuple(row[: len(_COLUMNS)])


def experiment_rows(
    connection: Connection, experiment_id: uuid.UUID, key_id: str | None, probe_keys: bool
) -> list[Any]:
    """One row per tag (at least one): the experiment's columns (``record_values``),
    ``keys_exist``, ``tag`` and the key's ``key_hash``/``key_owner``/``key_admin``/
    ``key_revoked_at``."""
    return list(
        connection.execute(
            _STATEMENTS[probe_keys], {"experiment_id": experiment_id, "key_id": key_id or ""}
        )
    )


def _driver_sql(statement: Select[Any]) -> tuple[str, dict[str, Any]]:
    dialect = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]  # SQLAlchemy's, unannotated
    compiled = statement.compile(dialect=dialect)
    return str(compiled), dict(compiled.params)


_DRIVER_SQL = {probe: _driver_sql(statement) for probe, statement in _STATEMENTS.items()}


async def connect_async(database_url: str) -> psycopg.AsyncConnection[Any]:
    """A psycopg connection for the event loop (autocommit; rows as named tuples)."""
    conninfo = make_url(database_url).set(drivername="postgresql")
    return await psycopg.AsyncConnection.connect(
        conninfo.render_as_string(hide_password=False), autocommit=True,
        row_factory=namedtuple_row,
    )


async def experiment_rows_async(
    connection: psycopg.AsyncConnection[Any], experiment_id: uuid.UUID, key_id: str | None,
    probe_keys: bool,
) -> list[Any]:
    """``experiment_rows`` on a psycopg ``AsyncConnection`` (from ``connect_async``)."""
    sql, defaults = _DRIVER_SQL[probe_keys]
    cursor = await connection.execute(
        sql, {**defaults, "experiment_id": experiment_id, "key_id": key_id or ""}
    )
    return await cursor.fetchall()
