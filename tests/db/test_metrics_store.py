"""app.db.metrics on SQLite and Postgres: non-finite values, idempotent inserts, keyset reads."""

from __future__ import annotations

import math
import uuid

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import experiments, metrics
from app.db.models import FINITE, NAN, NEG_INF, POS_INF
from app.db.models import MetricPoint as MetricRow
from worker.training.result import MetricPoint

VALUES = [0.0, -0.0, 1.5, -2.25, 1e-300, 1e300, math.nan, math.inf, -math.inf]


def new_experiment(session: Session) -> uuid.UUID:
    row, created = experiments.create(session, config={"name": "t"}, tags=[])
    assert created
    return row.id


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or a == b


@pytest.mark.parametrize("value", VALUES)
def test_encode_decode_round_trip(value: float) -> None:
    stored, kind = metrics.encode_value(value)
    assert same(metrics.decode_value(stored, kind), value)
    assert (stored is None) == (not math.isfinite(value))


def test_encode_kinds() -> None:
    assert metrics.encode_value(math.nan) == (None, NAN)
    assert metrics.encode_value(math.inf) == (None, POS_INF)
    assert metrics.encode_value(-math.inf) == (None, NEG_INF)
    assert metrics.encode_value(3.0) == (3.0, FINITE)


def test_insert_and_read_back_every_value(session: Session) -> None:
    experiment_id = new_experiment(session)
    points = [MetricPoint("loss", step, 1, v, 100.0 + step) for step, v in enumerate(VALUES)]
    assert metrics.insert_points(session, experiment_id, points) == len(points)
    session.commit()
    read, next_after = metrics.read_page(session, experiment_id)
    assert next_after == len(VALUES) - 1
    assert [(p.name, p.step, p.epoch, p.wall_time) for p in read] == [
        (p.name, p.step, p.epoch, p.wall_time) for p in points
    ]
    for got, want in zip(read, points, strict=True):
        assert same(got.value, want.value)
    # Aggregates see only the finite values; non-finite rows keep value NULL.
    finite_max = session.scalar(
        select(func.max(MetricRow.value)).where(MetricRow.experiment_id == experiment_id)
    )
    assert finite_max == 1e300


def test_insert_points_is_idempotent(session: Session) -> None:
    experiment_id = new_experiment(session)
    point = MetricPoint("loss", 1, 1, 0.5, 10.0)
    metrics.insert_points(session, experiment_id, [point])
    session.commit()
    # A retried batch: the same point again (even with another value) and a new one.
    metrics.insert_points(
        session,
        experiment_id,
        [point, point._replace(value=9.0), MetricPoint("loss", 2, 1, 0.4, 11)],
    )
    session.commit()
    count = session.scalar(
        select(func.count()).select_from(MetricRow).where(MetricRow.experiment_id == experiment_id)
    )
    assert count == 2
    read, _ = metrics.read_page(session, experiment_id)
    assert [(p.step, p.value) for p in read] == [(1, 0.5), (2, 0.4)]
    assert metrics.insert_points(session, experiment_id, []) == 0


def test_points_are_per_experiment(session: Session) -> None:
    a, b = new_experiment(session), new_experiment(session)
    metrics.insert_points(session, a, [MetricPoint("loss", 1, 1, 1.0, 1.0)])
    metrics.insert_points(session, b, [MetricPoint("loss", 1, 1, 2.0, 1.0)])
    session.commit()
    assert [p.value for p in metrics.read_page(session, a)[0]] == [1.0]
    assert [p.value for p in metrics.read_page(session, b)[0]] == [2.0]
    assert metrics.names(session, a) == [metrics.NameSummary("loss", 1, 1)]


def test_read_page_keyset_never_splits_a_step(session: Session) -> None:
    experiment_id = new_experiment(session)
    points = [
        MetricPoint(name, step, 1, float(step), 0.0)
        for step in range(1, 11)
        for name in (["a", "b", "c"] if step % 3 == 0 else ["a"])
    ]
    metrics.insert_points(session, experiment_id, points)
    session.commit()
    for limit in (1, 2, 3, 4):
        seen: list[tuple[str, int]] = []
        after = -1
        while True:
            page, next_after = metrics.read_page(
                session, experiment_id, after_step=after, limit=limit
            )
            if next_after is None:
                assert page == []
                break
            assert len(page) <= limit or len({p.step for p in page}) == 1
            seen.extend((p.name, p.step) for p in page)
            after = next_after
        assert seen == [(p.name, p.step) for p in sorted(points, key=lambda p: (p.step, p.name))]


def test_read_page_filters_names(session: Session) -> None:
    experiment_id = new_experiment(session)
    metrics.insert_points(session, experiment_id, [
        MetricPoint(name, step, 1, 1.0, 0.0) for step in (1, 2) for name in ("a", "b", "c")
    ])  # fmt: skip
    session.commit()
    page, _ = metrics.read_page(session, experiment_id, names=["c", "a"], limit=3)
    assert [(p.name, p.step) for p in page] == [("a", 1), ("c", 1)]


def test_names_summary(session: Session) -> None:
    experiment_id = new_experiment(session)
    metrics.insert_points(session, experiment_id, [
        MetricPoint("loss", 1, 1, 1.0, 0.0), MetricPoint("loss", 5, 1, math.nan, 0.0),
        MetricPoint("acc", 4, 1, 0.5, 0.0),
    ])  # fmt: skip
    session.commit()
    assert metrics.names(session, experiment_id) == [
        metrics.NameSummary("acc", 1, 4),
        metrics.NameSummary("loss", 2, 5),
    ]
