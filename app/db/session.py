"""Engine and sessions, and the one place that tells the backends apart: an engine's URL picks
its metric store (``app.db.metric_store``) when the engine is created. SQLite gets WAL and a
busy timeout: the API and a worker share the file."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.db.metric_store.interface import MetricStore
from app.db.metric_store.portable import PortableMetricStore
from app.db.metric_store.postgres import PostgresMetricStore

Backend = Literal["sqlite", "postgres"]


def backend(url: str) -> Backend:
    """The backend a database URL names. Postgres means psycopg 3 (a dependency): the metric
    store and the polling fast path talk to that driver directly."""
    driver = make_url(url).drivername
    if driver == "sqlite" or driver.startswith("sqlite+"):
        return "sqlite"
    if driver == "postgresql+psycopg":
        return "postgres"
    raise ValueError(f"unsupported database URL scheme {driver!r}: use sqlite:///PATH or "
                     "postgresql+psycopg://…")


_STORES: weakref.WeakKeyDictionary[Engine, MetricStore] = weakref.WeakKeyDictionary()


def make_engine(url: str) -> Engine:
    kind = backend(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if kind == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
    else:
        kwargs.update(pool_size=10, max_overflow=20)
    engine = create_engine(url, **kwargs)
    if kind == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _STORES[engine] = PostgresMetricStore() if kind == "postgres" else PortableMetricStore()
    return engine


def metric_store(session: Session) -> MetricStore:
    """The metric store of the session's engine (chosen in ``make_engine``)."""
    return _STORES[session.get_bind().engine]


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
