"""Engine and sessions. SQLite gets WAL and a busy timeout: the API and a worker share the file."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker


def make_engine(url: str) -> Engine:
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


_ENGINES: dict[str, Engine] = {}
_FACTORIES: dict[str, sessionmaker[Session]] = {}


def engine_for(url: str) -> Engine:
    """One engine (one connection pool) per URL per process."""
    if url not in _ENGINES:
        _ENGINES[url] = make_engine(url)
    return _ENGINES[url]


def session_factory(url: str) -> sessionmaker[Session]:
    if url not in _FACTORIES:
        _FACTORIES[url] = sessionmaker(bind=engine_for(url), expire_on_commit=False)
    return _FACTORIES[url]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_after_fork() -> None:
    """Forget connections inherited from the parent process: they must never be shared."""
    for engine in _ENGINES.values():
        engine.dispose(close=False)


def uses_psycopg(session: Session) -> bool:
    """Postgres through psycopg 3: the hot paths then talk to the driver directly."""
    dialect = session.get_bind().dialect
    return dialect.name == "postgresql" and dialect.driver == "psycopg"


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
