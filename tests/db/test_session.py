"""app.db.session picks each engine's metric store from its URL, once, when it makes the engine."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.orm import Session

from app.db import experiments, metrics
from app.db.metric_store.portable import PortableMetricStore
from app.db.metric_store.postgres import PostgresMetricStore
from app.db.session import backend, make_engine, metric_store
from worker.training.result import MetricPoint


def test_the_url_names_the_backend() -> None:
    assert backend("sqlite:///x.db") == "sqlite"
    assert backend("sqlite+pysqlite:///:memory:") == "sqlite"
    assert backend("postgresql+psycopg://u@h/db") == "postgres"


@pytest.mark.parametrize("url", ["postgresql://u@h/db", "postgresql+psycopg2://u@h/db",
                                 "mysql://u@h/db"])
def test_an_unsupported_url_is_refused_before_any_engine_exists(url: str) -> None:
    with pytest.raises(ValueError, match="unsupported database URL"):
        make_engine(url)


def test_each_engine_gets_its_backends_store(session: Session) -> None:
    store = metric_store(session)
    if session.get_bind().dialect.name == "postgresql":
        assert type(store) is PostgresMetricStore
    else:
        assert type(store) is PortableMetricStore
    assert metric_store(session) is store  # chosen once, not per call


def test_delete_drops_only_the_named_experiments(session: Session) -> None:
    kept, dropped = (experiments.create(session, config={"name": n}, tags=[])[0].id
                     for n in ("kept", "dropped"))
    for experiment_id in (kept, dropped):
        metrics.insert_points(session, experiment_id,
                              [MetricPoint("loss", s, 1, 0.5, 1.0) for s in range(1, 101)])
    metric_store(session).delete(session, [dropped, uuid.uuid4()])
    session.commit()
    assert metrics.names(session, dropped) == []
    assert metrics.names(session, kept) == [metrics.NameSummary("loss", 100, 100)]
