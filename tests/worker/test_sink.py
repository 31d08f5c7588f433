"""The metric sink: batches in order, heartbeat + cancel flag, lease fencing, outage retries."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.core.config import Settings
from app.db import experiments, lifecycle, metrics
from app.db.lifecycle import Lease
from app.db.session import session_scope
from tests.waiting import wait_until
from worker.dbretry import DatabaseOutageError, with_retry
from worker.sink import MetricSink
from worker.training.result import MetricPoint


def claimed(settings: Settings) -> Lease:
    with session_scope(settings.database_url) as session:
        row, _ = experiments.create(session, config={"name": "x"}, tags=[])
        lease = lifecycle.claim(session, row.id, worker="w")
    assert lease is not None
    return lease


def points(steps: range) -> list[MetricPoint]:
    return [MetricPoint(n, s, 1, float(s), 0.0) for s in steps for n in ("loss", "grad_norm")]


def stored(settings: Settings, experiment_id: uuid.UUID) -> list[tuple[str, int]]:
    with session_scope(settings.database_url) as session:
        page, _ = metrics.read_page(session, experiment_id, limit=100_000)
    return [(p.name, p.step) for p in page]


def test_everything_put_is_written_once(settings: Settings) -> None:
    lease = claimed(settings)
    sink = MetricSink(settings.database_url, lease, flush_every_s=0.01)
    for start in range(1, 500, 50):
        sink.put(points(range(start, start + 50)))
    sink.wait_written()
    assert sink.points_written == 1000
    sink.close()
    assert sorted(stored(settings, lease.experiment_id)) == sorted(
        (p.name, p.step) for p in points(range(1, 501))
    )


def test_cancel_request_reaches_should_stop(settings: Settings) -> None:
    lease = claimed(settings)
    sink = MetricSink(settings.database_url, lease, flush_every_s=0.01)
    assert not sink.should_stop()
    with session_scope(settings.database_url) as session:
        experiments.request_cancel(session, lease.experiment_id)
    wait_until(sink.should_stop, "the cancel request to reach the sink")
    assert sink.cancel_requested
    sink.close()


def test_a_lost_lease_stops_training_and_writes_nothing(settings: Settings) -> None:
    lease = claimed(settings)
    stale = Lease(lease.experiment_id, lease.worker, lease.attempt + 1)  # not the owner
    sink = MetricSink(settings.database_url, stale, flush_every_s=0.01)
    sink.put(points(range(1, 4)))
    sink.close()
    assert sink.lease_lost and sink.should_stop()
    assert stored(settings, lease.experiment_id) == []


def test_retry_rides_out_a_short_outage() -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OperationalError("SELECT 1", {}, Exception("connection refused"))
        return "ok"

    assert with_retry(flaky, limit_s=10, what="test") == "ok" and len(calls) == 3


def test_retry_gives_up_after_the_limit_with_a_reason() -> None:
    def down() -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    with pytest.raises(DatabaseOutageError, match="unreachable for over 0 s while trying to x"):
        with_retry(down, limit_s=0.3, what="x")


def test_retry_does_not_hide_real_errors() -> None:
    def broken() -> None:
        raise IntegrityError("INSERT", {}, Exception("duplicate key"))

    with pytest.raises(IntegrityError):
        with_retry(broken, limit_s=10, what="x")


def test_an_unreachable_database_fails_the_sink_after_the_limit(settings: Settings) -> None:
    lease = claimed(settings)
    sink = MetricSink(
        "postgresql+psycopg://nobody@127.0.0.1:1/none",
        lease,
        flush_every_s=0.01,
        outage_limit_s=0.5,
    )
    sink.put(points(range(1, 3)))
    sink.close()
    assert sink.error is not None and "unreachable" in sink.error and sink.should_stop()
