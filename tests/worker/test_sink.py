"""The metric sink: batches in order, heartbeat + cancel flag, lease fencing, outage retries."""

from __future__ import annotations

import math
import multiprocessing
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy.exc import IntegrityError, OperationalError

from app.core.config import Settings
from app.db import experiments, lifecycle, metrics
from app.db.lifecycle import Lease
from app.db.session import session_scope
from tests.waiting import wait_until
from worker import metric_writer
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


def odd_values() -> list[MetricPoint]:
    values = [0.1 + 0.2, -0.0, 5e-324, 1.7976931348623157e308, math.nan, math.inf, -math.inf]
    return [MetricPoint(f"m/{k}", k + 1, 1 + k // 3, v, 1.7e9 + k / 7)
            for k, v in enumerate(values)]


def same(a: MetricPoint, b: MetricPoint) -> bool:
    """Equal field by field, NaN equal to NaN, and bit for bit for floats."""
    return (a.name, a.step, a.epoch) == (b.name, b.step, b.epoch) and all(
        math.copysign(1, x) == math.copysign(1, y) and (x == y or (math.isnan(x) and math.isnan(y)))
        for x, y in ((a.value, b.value), (a.wall_time, b.wall_time))
    )


def test_the_pipe_encoding_keeps_every_point_as_it_was() -> None:
    sent = odd_values() + points(range(1, 4))
    columns = metric_writer.empty()
    metric_writer.decode(metric_writer.encode(sent[:4]), columns)
    metric_writer.decode(metric_writer.encode(sent[4:]), columns)  # appended, in order
    received = [MetricPoint(*point) for point in zip(*columns, strict=True)]
    assert len(received) == len(sent)
    assert all(same(p, q) for p, q in zip(received, sent, strict=True))


def test_stored_values_and_wall_times_equal_the_engines(settings: Settings) -> None:
    lease = claimed(settings)
    sink = MetricSink(settings.database_url, lease, flush_every_s=0.01)
    sent = [p for p in odd_values() if p.value != 0]  # (SQLite stores -0.0 as 0.0)
    sink.put(sent)
    sink.close()
    with session_scope(settings.database_url) as session:
        page, _ = metrics.read_page(session, lease.experiment_id, limit=100)
    got = sorted((MetricPoint(p.name, p.step, p.epoch, p.value, p.wall_time) for p in page),
                 key=lambda p: p.step)
    assert len(got) == len(sent) and all(same(p, q) for p, q in zip(got, sent, strict=True))


def test_cancel_request_reaches_should_stop(settings: Settings) -> None:
    lease = claimed(settings)
    sink = MetricSink(settings.database_url, lease, flush_every_s=0.01)
    assert not sink.should_stop()
    with session_scope(settings.database_url) as session:
        experiments.request_cancel(session, lease.experiment_id)
    wait_until(sink.should_stop, "the cancel request to reach the sink")
    assert sink.cancel_requested
    sink.close()


def test_the_writer_checks_in_at_once_before_any_point(settings: Settings) -> None:
    # Its first write (heartbeat + status) goes before the engine puts anything, so connecting
    # costs the job's data loading, not its first steps; a flush interval that never comes
    # due shows it: a cancel made before the sink started still arrives.
    lease = claimed(settings)
    with session_scope(settings.database_url) as session:
        experiments.request_cancel(session, lease.experiment_id)
    sink = MetricSink(settings.database_url, lease, flush_every_s=3600)
    wait_until(sink.should_stop, "the writer's first check-in")
    assert sink.cancel_requested and sink.points_written == 0
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


def checkpointing(settings: Settings, lease: Lease) -> tuple[MetricSink, Path, Path]:
    """A sink with checkpoints staged; returns it, the published path and the staging path."""
    final = settings.artifacts_dir / "c.safetensors"
    final.parent.mkdir(parents=True, exist_ok=True)
    sink = MetricSink(settings.database_url, lease, flush_every_s=0.01)
    return sink, final, sink.staged(final)


def first_epoch(sink: MetricSink, staging: Path) -> None:
    """Epoch 1's points and its staged checkpoint, then epoch 2's points."""
    sink.put(points(range(1, 101)))
    sink.before_checkpoint()  # nothing staged yet: returns without waiting
    staging.write_text("epoch 1")
    sink.put(points(range(101, 201)))


def test_a_staged_checkpoint_is_published_once_its_points_are_written(settings: Settings) -> None:
    lease = claimed(settings)
    sink, final, staging = checkpointing(settings, lease)
    first_epoch(sink, staging)
    sink.wait_written()
    sink.before_checkpoint()  # publishes epoch 1, whose points are stored
    assert final.read_text() == "epoch 1" and not staging.exists()
    assert len(stored(settings, lease.experiment_id)) == 400
    staging.write_text("epoch 2")
    sink.close()  # writes the rest, then publishes epoch 2
    assert final.read_text() == "epoch 2" and not staging.exists()
    assert len(stored(settings, lease.experiment_id)) == 400


def test_an_epoch_end_never_waits_for_the_database(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writer (forked: it inherits the patch) holds every batch of points until the gate
    # opens; its first check-in, with no points, goes through.
    gate = multiprocessing.Event()
    write = metric_writer.write

    def held(url: str, lease: Lease, batch: metric_writer.Batch) -> str:
        if batch[0]:
            gate.wait()
        return write(url, lease, batch)

    monkeypatch.setattr(metric_writer, "write", held)
    lease = claimed(settings)
    sink, final, staging = checkpointing(settings, lease)
    first_epoch(sink, staging)
    epoch_end = threading.Thread(target=sink.before_checkpoint)
    epoch_end.start()
    epoch_end.join(60)  # a hang guard: it returns at once, the points still held
    assert not epoch_end.is_alive()
    assert not final.exists()  # epoch 1's points are not stored: not published...
    staging.write_text("epoch 2")  # ...and the next epoch's checkpoint replaces it
    gate.set()
    sink.close()
    assert final.read_text() == "epoch 2" and not staging.exists()
    assert len(stored(settings, lease.experiment_id)) == 400


def test_a_staged_checkpoint_ahead_of_unwritten_points_is_discarded(settings: Settings) -> None:
    lease = claimed(settings)
    final = settings.artifacts_dir / "c.safetensors"
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_text("older")
    sink = MetricSink("postgresql+psycopg://nobody@127.0.0.1:1/none", lease,
                      flush_every_s=0.01, outage_limit_s=0.5)
    staging = sink.staged(final)
    sink.put(points(range(1, 3)))
    sink.before_checkpoint()
    staging.write_text("ahead of the database")
    sink.close()
    assert sink.error is not None
    assert final.read_text() == "older" and not staging.exists()
