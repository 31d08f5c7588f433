"""The fast ingest path (COPY into a staging table on Postgres, multi-row INSERT on SQLite) and the
lean page encoding: same results as the general path, on both backends."""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.api.routes.metrics import page_json
from app.api.schemas import MetricPage, MetricPointOut
from app.db import experiments, metrics
from app.db.metric_store import postgres
from app.db.metric_store.interface import Columns
from app.db.models import MetricPoint as MetricRow
from worker.training.result import MetricPoint

Inserter = Callable[[Session, uuid.UUID, list[MetricPoint]], int]
ODD = [0.5, math.nan, math.inf, -math.inf, -0.0, 1e-300, 1e300, 0.25]


def new_experiment(session: Session) -> uuid.UUID:
    row, _ = experiments.create(session, config={"name": "t"}, tags=[])
    return row.id


def stored(session: Session, experiment_id: uuid.UUID) -> list[tuple[str, int, float]]:
    page, _ = metrics.read_page(session, experiment_id, limit=100_000)
    return [(p.name, p.step, p.value) for p in page]


def same(a: list[tuple[str, int, float]], b: list[tuple[str, int, float]]) -> bool:
    return len(a) == len(b) and all(
        x[:2] == y[:2] and (x[2] == y[2] or (math.isnan(x[2]) and math.isnan(y[2])))
        for x, y in zip(a, b, strict=True)
    )


def count(session: Session, experiment_id: uuid.UUID) -> int:
    return session.scalar(select(func.count()).select_from(MetricRow)
                          .where(MetricRow.experiment_id == experiment_id)) or 0


def test_postgres_goes_through_copy(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    original = postgres._copy_in

    def spy(cursor: object, statement: str, batch: Columns | list[metrics.Row],
            experiment_id: uuid.UUID | None = None) -> None:
        calls.append(type(batch).__name__)
        original(cursor, statement, batch, experiment_id)

    monkeypatch.setattr(postgres, "_copy_in", spy)
    experiment_id = new_experiment(session)
    metrics.insert_points(session, experiment_id, [MetricPoint("loss", 1, 1, 0.5, 1.0)])
    metrics.insert_columns(session, experiment_id, ["loss"], [2], [1], [0.5], [1.0])
    session.commit()
    on_postgres = session.get_bind().dialect.name == "postgresql"
    # Rows through psycopg's adapters, the metric writer's columns as numpy-built COPY data.
    assert calls == (["list", "Columns"] if on_postgres else [])
    assert count(session, experiment_id) == 2


@pytest.fixture(params=["points", "columns"])
def insert(request: pytest.FixtureRequest) -> Inserter:
    """``insert_points``, or the same points as the metric writer's columns."""
    if request.param == "points":
        return metrics.insert_points
    return lambda session, experiment_id, points: metrics.insert_columns(
        session, experiment_id, *zip(*points, strict=True))


def test_non_finite_values_survive(session: Session, insert: Inserter) -> None:
    experiment_id = new_experiment(session)
    points = [MetricPoint("loss", step, 1, v, 10.0 + step) for step, v in enumerate(ODD)]
    assert insert(session, experiment_id, points) == len(points)
    session.commit()
    assert same(stored(session, experiment_id), [("loss", p.step, p.value) for p in points])


def test_a_retried_batch_changes_nothing(session: Session, insert: Inserter) -> None:
    experiment_id = new_experiment(session)
    batch = [MetricPoint(name, step, 1, step + 0.5, 1.0) for step in range(1, 50)
             for name in ("a", "b")]
    insert(session, experiment_id, batch)
    session.commit()
    before = stored(session, experiment_id)
    # The same batch again, with other values: the stored points win.
    insert(session, experiment_id, [p._replace(value=-1.0) for p in batch])
    session.commit()
    assert stored(session, experiment_id) == before


def test_an_overlapping_batch_adds_only_the_new_points(session: Session, insert: Inserter) -> None:
    experiment_id = new_experiment(session)
    insert(session, experiment_id,
                          [MetricPoint("a", s, 1, float(s), 1.0) for s in range(1, 11)])
    session.commit()
    # A resumed run replays steps 6-10 (other values) and goes on to 15.
    insert(session, experiment_id,
                          [MetricPoint("a", s, 1, -float(s), 1.0) for s in range(6, 16)])
    session.commit()
    assert [v for _, _, v in stored(session, experiment_id)] == [
        *(float(s) for s in range(1, 11)), *(-float(s) for s in range(11, 16))]


def test_duplicates_in_one_batch_keep_the_first(session: Session, insert: Inserter) -> None:
    experiment_id = new_experiment(session)
    insert(session, experiment_id, [
        MetricPoint("a", 1, 1, 1.0, 1.0), MetricPoint("a", 2, 1, 2.0, 1.0),
        MetricPoint("a", 1, 1, 9.0, 1.0), MetricPoint("b", 1, 1, 3.0, 1.0),
    ])
    session.commit()
    assert stored(session, experiment_id) == [("a", 1, 1.0), ("b", 1, 3.0), ("a", 2, 2.0)]


def test_several_batches_in_one_transaction_stay_apart(session: Session, insert: Inserter) -> None:
    """The staging table is per connection: a second batch must not see the first's rows."""
    a, b = new_experiment(session), new_experiment(session)
    insert(session, a, [MetricPoint("x", s, 1, 1.0, 1.0) for s in range(1, 4)])
    insert(session, b, [MetricPoint("x", 7, 1, 2.0, 1.0)])
    insert(session, a, [MetricPoint("y", 1, 1, 3.0, 1.0)])
    session.commit()
    assert stored(session, a) == [("x", 1, 1.0), ("y", 1, 3.0), ("x", 2, 1.0), ("x", 3, 1.0)]
    assert stored(session, b) == [("x", 7, 2.0)]
    # Overlapping batches (the staging path on Postgres), several in one transaction.
    insert(session, a, [MetricPoint("x", s, 1, 5.0, 1.0) for s in range(2, 6)])
    insert(session, b, [MetricPoint("x", s, 1, 6.0, 1.0) for s in range(6, 9)])
    insert(session, a, [MetricPoint("y", 1, 1, 7.0, 1.0)])
    session.commit()
    assert stored(session, a) == [("x", 1, 1.0), ("y", 1, 3.0), ("x", 2, 1.0), ("x", 3, 1.0),
                                  ("x", 4, 5.0), ("x", 5, 5.0)]
    assert stored(session, b) == [("x", 6, 6.0), ("x", 7, 2.0), ("x", 8, 6.0)]


def test_errors_are_sqlalchemy_errors_and_the_session_recovers(session: Session) -> None:
    experiment_id = new_experiment(session)
    session.commit()
    with pytest.raises(IntegrityError):  # a point without an epoch: NOT NULL refuses
        metrics.insert_points(session, experiment_id, [
            MetricPoint("x", 1, 1, 1.0, 1.0), MetricPoint("x", 2, None, 1.0, 1.0),  # type: ignore[arg-type]
        ])
    session.rollback()
    metrics.insert_points(session, experiment_id, [MetricPoint("x", 1, 1, 1.0, 1.0)])
    session.commit()
    assert count(session, experiment_id) == 1


def test_points_of_an_unknown_experiment_are_refused(session: Session) -> None:
    """No foreign key since migration 0004: insert_points checks the experiment itself."""
    missing = uuid.uuid4()
    with pytest.raises(metrics.UnknownExperimentError):
        metrics.insert_points(session, missing, [MetricPoint("x", 1, 1, 1.0, 1.0)])
    session.rollback()
    assert count(session, missing) == 0


def test_a_large_batch(session: Session) -> None:
    experiment_id = new_experiment(session)
    points = [MetricPoint(f"m{n}", s, 1 + s // 1000, math.sin(s) * n, 1.0 + s)
              for s in range(1, 5001) for n in range(4)]
    assert metrics.insert_points(session, experiment_id, points) == len(points)
    session.commit()
    assert count(session, experiment_id) == len(points)
    page, next_after = metrics.read_page(session, experiment_id, after_step=4000, names=["m3"],
                                         limit=10_000)
    assert next_after == 5000 and [p.step for p in page] == list(range(4001, 5001))
    assert all(p.value == math.sin(p.step) * 3 for p in page)


def test_page_json_matches_the_pydantic_page() -> None:
    rows: list[metrics.Row] = []
    for step, v in enumerate(ODD):
        value, kind = metrics.encode_value(v)
        rows.append(("loss", step, 1, value, kind, 100.0 + step))
    expected = MetricPage(
        items=[MetricPointOut(name=n, step=s, epoch=e, value=metrics.decode_value(v, k),
                              wall_time=w) for n, s, e, v, k, w in rows],
        next_after_step=len(ODD) - 1,
        has_more=True,
    ).model_dump_json()
    assert json.loads(page_json(rows, -1, True)) == json.loads(expected)
    assert json.loads(page_json([], 7)) == {"items": [], "next_after_step": 7, "has_more": False}
    values = [item["value"] for item in json.loads(page_json(rows))["items"]]
    assert values[1:4] == ["NaN", "Infinity", "-Infinity"]
