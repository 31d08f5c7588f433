"""app.db.experiments on SQLite and Postgres: conditional state changes and keyset listing."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db import experiments, lifecycle, metrics
from app.db.models import Experiment, ExperimentTag, MetricPoint
from app.db.session import session_factory
from worker.training.result import MetricPoint as EnginePoint


def new(session: Session, name: str = "t", tags: tuple[str, ...] = ()) -> uuid.UUID:
    row, created = experiments.create(session, config={"name": name}, tags=list(tags))
    assert created
    return row.id


def status_of(session: Session, experiment_id: uuid.UUID) -> str | None:
    session.expire_all()
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def test_claim_succeeds_only_once(session: Session, db_url: str) -> None:
    experiment_id = new(session)
    lease = lifecycle.claim(session, experiment_id, worker="w1")
    assert lease is not None and (lease.worker, lease.attempt) == ("w1", 1)
    # A duplicate delivery, in another session as another worker would have, claims nothing.
    with session_factory(db_url)() as other:
        assert lifecycle.claim(other, experiment_id, worker="w2") is None
    session.expire_all()
    row = experiments.get(session, experiment_id)
    assert row is not None
    assert (row.status, row.worker, row.attempt) == ("running", "w1", 1)
    assert row.started_at is not None


def test_claim_of_a_cancelled_experiment_fails(session: Session) -> None:
    experiment_id = new(session)
    assert experiments.request_cancel(session, experiment_id) == "cancelled"
    assert lifecycle.claim(session, experiment_id, worker="w") is None
    assert lifecycle.claim(session, uuid.uuid4(), worker="w") is None


def test_finish_turns_success_into_cancelled_when_cancelling(session: Session) -> None:
    experiment_id = new(session)
    lease = lifecycle.claim(session, experiment_id, worker="w")
    assert lease is not None
    assert experiments.request_cancel(session, experiment_id) == "cancelling"
    assert experiments.request_cancel(session, experiment_id) == "cancelling"
    lifecycle.finish(session, lease, status="succeeded", summary={"steps": 3})
    session.commit()
    assert status_of(session, experiment_id) == "cancelled"
    row = experiments.get(session, experiment_id)
    assert row is not None and row.finished_at is not None and row.summary == {"steps": 3}


@pytest.mark.parametrize("status", ["succeeded", "diverged", "failed"])
def test_finish_records_the_worker_status(session: Session, status: str) -> None:
    experiment_id = new(session)
    lease = lifecycle.claim(session, experiment_id, worker="w")
    assert lease is not None
    lifecycle.finish(session, lease, status=status, error="boom")
    session.commit()
    assert status_of(session, experiment_id) == status
    with pytest.raises(experiments.InvalidTransitionError):
        experiments.request_cancel(session, experiment_id)


def test_finish_does_not_touch_a_queued_experiment(session: Session) -> None:
    experiment_id = new(session)
    lease = lifecycle.Lease(experiment_id, "w", 1)  # a lease nobody was ever granted
    assert not lifecycle.finish(session, lease, status="succeeded")
    session.commit()
    assert status_of(session, experiment_id) == "queued"


def test_a_diverged_experiment_stays_diverged_when_cancelling(session: Session) -> None:
    experiment_id = new(session)
    lease = lifecycle.claim(session, experiment_id, worker="w")
    assert lease is not None
    experiments.request_cancel(session, experiment_id)
    lifecycle.finish(session, lease, status="diverged")
    session.commit()
    assert status_of(session, experiment_id) == "diverged"


def test_delete_finished_removes_points_and_tags(session: Session) -> None:
    keep, gone = new(session, tags=("a",)), new(session, tags=("a", "b"))
    for experiment_id in (keep, gone):
        metrics.insert_points(session, experiment_id, [EnginePoint("loss", 1, 1, 1.0, 1.0)])
    session.commit()
    with pytest.raises(experiments.InvalidTransitionError):
        experiments.delete_finished(session, gone)  # still queued
    experiments.request_cancel(session, gone)
    experiments.delete_finished(session, gone)
    session.expire_all()
    assert experiments.get(session, gone) is None
    assert session.scalar(select(func.count()).select_from(MetricPoint)) == 1
    assert session.scalars(select(ExperimentTag.experiment_id)).all() == [keep]


def test_idempotency_key(session: Session) -> None:
    first, created = experiments.create(
        session, config={"name": "a"}, tags=[], idempotency_key="k", request_hash="h1"
    )
    again, created_again = experiments.create(
        session, config={"name": "a"}, tags=[], idempotency_key="k", request_hash="h1"
    )
    assert created and not created_again and again.id == first.id
    with pytest.raises(experiments.IdempotencyConflictError):
        experiments.create(
            session, config={"name": "a"}, tags=[], idempotency_key="k", request_hash="h2"
        )


def test_list_page_newest_first_with_ties_on_created_at(session: Session) -> None:
    ids = [new(session, name=f"e{i}", tags=("even",) if i % 2 == 0 else ()) for i in range(9)]
    # Give some experiments the very same timestamp: the id breaks the tie.
    base = datetime(2030, 1, 1, tzinfo=UTC)
    stamps = [base + timedelta(seconds=i // 3) for i in range(9)]
    for experiment_id, stamp in zip(ids, stamps, strict=True):
        session.execute(
            update(Experiment).where(Experiment.id == experiment_id).values(created_at=stamp)
        )
    session.commit()
    expected = [i for _, i in sorted(zip(stamps, ids, strict=True), reverse=True)]

    for limit in (1, 2, 4, 9, 10):
        walked: list[uuid.UUID] = []
        cursor = None
        while True:
            page = experiments.list_page(session, limit=limit, cursor=cursor)
            assert len(page.items) <= limit
            walked.extend(row.id for row in page.items)
            cursor = page.next_cursor
            if cursor is None:
                break
        assert walked == expected, limit

    even = experiments.list_page(session, limit=100, tag="even")
    assert [row.id for row in even.items] == [i for i in expected if ids.index(i) % 2 == 0]
    named = experiments.list_page(session, limit=100, name="e4")
    assert [row.id for row in named.items] == [ids[4]]
    assert experiments.list_page(session, limit=100, status="running").items == []


@pytest.mark.parametrize("cursor", ["", "%%%", "bm9wZQ", "MjAyMC0wMS0wMXx4"])
def test_list_page_rejects_a_foreign_cursor(session: Session, cursor: str) -> None:
    with pytest.raises(ValueError, match="invalid cursor"):
        experiments.list_page(session, limit=3, cursor=cursor)


def test_tags_of(session: Session) -> None:
    a = new(session, tags=("z", "a", "z"))
    b = new(session)
    assert experiments.tags_of(session, [a, b]) == {a: ["a", "z"], b: []}
    assert experiments.tags_of(session, []) == {}


def test_the_longest_idempotency_key_fits_with_the_longest_owner(session: Session) -> None:
    from app.api.headers import IDEMPOTENCY_KEY_MAX

    row, created = experiments.create(session, config={"name": "a"}, tags=[], owner="o" * 64,
                                      idempotency_key="k" * IDEMPOTENCY_KEY_MAX, request_hash="h")
    stored = session.scalar(select(Experiment.idempotency_key).where(Experiment.id == row.id))
    assert created and stored == f"{'o' * 64}:{'k' * IDEMPOTENCY_KEY_MAX}"
