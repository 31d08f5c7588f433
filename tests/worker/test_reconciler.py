"""The reconciler re-sends exactly what the broker lost, on the real brokers: Redis (the test
database number only) and the embedded filesystem queue, each through Celery's own sending."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import update

from app.core.config import Settings
from app.db import experiments
from app.db.experiments import now
from app.db.models import Experiment
from app.db.session import session_scope
from app.dispatch import CeleryDispatcher
from tests.db.ci import required_env
from worker import gate
from worker.reconciler import Outage, reconcile_once


@pytest.fixture(params=["filesystem", "redis"])
def settings(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Settings]:
    if request.param == "filesystem":
        yield settings
        return
    url = required_env("NORMLAB_TEST_REDIS_URL", "a Redis URL such as redis://127.0.0.1/15")
    redis.Redis.from_url(url).flushdb()  # this test database number only
    yield settings.model_copy(update={"broker_url": url})
    redis.Redis.from_url(url).flushdb()


def lose_the_broker(settings: Settings) -> None:
    if settings.broker_url is None:
        shutil.rmtree(settings.queue_dir / "messages")
        (settings.queue_dir / "messages").mkdir()
    else:
        redis.Redis.from_url(settings.broker_url).flushdb()


def submit(settings: Settings, dispatcher: CeleryDispatcher, n: int) -> list[uuid.UUID]:
    """Queued experiments, sent once each, as the API does: commit, then send."""
    ids = []
    with session_scope(settings.database_url) as session:
        for _ in range(n):
            row, _ = experiments.create(session, config={"name": "r"}, tags=[])
            ids.append(row.id)
    for experiment_id in ids:
        dispatcher.send(experiment_id, "cpu")
    return ids


def age_all(settings: Settings) -> None:
    """Every queued experiment as if sent before the grace period."""
    with session_scope(settings.database_url) as session:
        session.execute(update(Experiment).values(
            updated_at=now() - timedelta(seconds=settings.queued_grace_s + 1)))
        session.commit()


def dispatch_counts(settings: Settings) -> dict[uuid.UUID, int]:
    with session_scope(settings.database_url) as session:
        return {row.id: row.dispatch_count for row in
                session.query(Experiment.id, Experiment.dispatch_count)}


def test_waiting_experiments_are_not_resent_lost_ones_are(settings: Settings) -> None:
    dispatcher = CeleryDispatcher(settings)
    ids = submit(settings, dispatcher, 5)
    assert dispatcher.waiting(delivered_s=60) == set(ids)
    for _ in range(3):  # several grace periods: the broker keeps one message each
        age_all(settings)
        done = reconcile_once(settings, dispatcher)
        assert (done.past_grace, done.in_broker, done.resent) == (5, 5, [])
    assert set(dispatch_counts(settings).values()) == {1}

    lose_the_broker(settings)  # FLUSHDB, or the queue folder emptied
    assert dispatcher.waiting(delivered_s=60) == set()
    age_all(settings)
    done = reconcile_once(settings, dispatcher)
    assert sorted(d.experiment_id for d in done.resent) == sorted(ids)
    assert dispatch_counts(settings) == dict.fromkeys(ids, 2)
    assert dispatcher.waiting(delivered_s=60) == set(ids)  # one message each again
    age_all(settings)
    assert reconcile_once(settings, dispatcher).resent == []


def test_a_failed_send_after_the_commit_is_resent(settings: Settings) -> None:
    dispatcher = CeleryDispatcher(settings)
    with session_scope(settings.database_url) as session:
        row, _ = experiments.create(session, config={"name": "r"}, tags=[])
    # The send raised after the commit: the row is queued, the broker holds nothing.
    age_all(settings)
    done = reconcile_once(settings, dispatcher)
    assert [d.experiment_id for d in done.resent] == [row.id]
    assert dispatcher.waiting(delivered_s=60) == {row.id}


# The filesystem queue removes a message when a worker takes it: the first test covers that.
@pytest.mark.parametrize("settings", ["redis"], indirect=True)
def test_a_message_taken_by_a_worker_that_never_claimed_counts_as_lost(
    settings: Settings,
) -> None:
    dispatcher = CeleryDispatcher(settings)
    [experiment_id] = submit(settings, dispatcher, 1)
    with dispatcher.app.connection_for_read() as connection:
        queue = connection.SimpleQueue("cpu")
        taken = queue.get(timeout=10)  # delivered, not acknowledged: Redis's unacked hash
        assert taken is not None
        assert dispatcher.waiting(delivered_s=60) == {experiment_id}  # being started
        assert dispatcher.waiting(delivered_s=0) == set()  # taken too long ago: lost
        taken.ack()
        queue.close()


def test_the_gate_names_what_makes_a_message_stale(settings: Settings) -> None:
    dispatcher = CeleryDispatcher(settings)
    [queued, running] = submit(settings, dispatcher, 2)
    with session_scope(settings.database_url) as session:
        session.execute(update(Experiment).where(Experiment.id == running)
                        .values(status="running"))
        session.commit()
    assert gate.stale_status(settings.database_url, queued) is None
    assert gate.stale_status(settings.database_url, running) == "running"
    assert gate.stale_status(settings.database_url, uuid.uuid4()) == "deleted"
    assert gate.stale_status("sqlite:////nonexistent/dir/x.db", queued) is None  # job decides


def test_unreadable_messages_count_as_none(tmp_path: Path) -> None:
    from app import backlog

    folder = tmp_path / "q"
    folder.mkdir()
    (folder / "1_x.cpu.msg").write_text("{not json")
    (folder / "2_y.cpu.msg").write_text('{"headers": {"task": "other"}, "body": "W10="}')
    assert backlog.in_folder(folder, ("cpu",), ("normlab.run_experiment",)) == set()


def test_after_an_outage_no_run_is_lost_until_a_heartbeat_timeout_has_passed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("worker.reconciler.time.monotonic", lambda: clock[0])
    outage = Outage(heartbeat_timeout_s=60)
    assert outage.over()  # never saw one
    outage.seen()  # the reconciler's own pass failed: the database is down
    clock[0] += 59
    assert not outage.over()
    clock[0] += 1
    assert outage.over()
