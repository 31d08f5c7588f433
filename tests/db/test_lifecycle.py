"""Leases and the reconciler's sweep, on SQLite and Postgres."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import experiments, lifecycle, metrics
from app.db.experiments import now
from app.db.models import Experiment
from worker.training.result import MetricPoint

SWEEP = {"heartbeat_timeout_s": 30, "max_attempts": 2, "max_run_s": 3600}


def new(session: Session, device: str = "cpu") -> uuid.UUID:
    row, _ = experiments.create(
        session, config={"name": "x", "resources": {"device": device}}, tags=[]
    )
    return row.id


def age(session: Session, experiment_id: uuid.UUID, **seconds: float) -> None:
    """Move timestamps into the past (field=seconds ago)."""
    values = {field: now() - timedelta(seconds=s) for field, s in seconds.items()}
    session.execute(update(Experiment).where(Experiment.id == experiment_id).values(**values))
    session.commit()


def status(session: Session, experiment_id: uuid.UUID) -> tuple[str, int, str | None]:
    session.expire_all()
    row = experiments.get(session, experiment_id)
    assert row is not None
    return row.status, row.attempt, row.error


def test_lease_fences_a_replaced_worker(session: Session) -> None:
    experiment_id = new(session)
    old = lifecycle.claim(session, experiment_id, worker="old")
    assert old is not None and lifecycle.heartbeat(session, old) == "running"
    session.commit()
    age(session, experiment_id, heartbeat_at=120)
    assert lifecycle.sweep(session, **SWEEP).requeued == 1
    new_lease = lifecycle.claim(session, experiment_id, worker="new")
    assert new_lease is not None and new_lease.attempt == 2
    # The zombie can neither heartbeat, nor finish, nor hand back.
    assert lifecycle.heartbeat(session, old) is None
    assert not lifecycle.finish(session, old, status="succeeded")
    assert lifecycle.hand_back(session, old) is None
    session.commit()
    assert status(session, experiment_id)[:2] == ("running", 2)
    assert lifecycle.finish(session, new_lease, status="succeeded")
    session.commit()
    assert status(session, experiment_id)[0] == "succeeded"


def test_sweep_requeues_then_fails_after_max_attempts(session: Session) -> None:
    experiment_id = new(session, device="cuda")
    for attempt in (1, 2):
        assert lifecycle.claim(session, experiment_id, worker=f"w{attempt}") is not None
        age(session, experiment_id, heartbeat_at=120)
        sweep = lifecycle.sweep(session, **SWEEP)
        if attempt == 1:
            assert sweep.requeued == 1
            assert [d[:3] for d in sweep.resend] == [(experiment_id, "cuda", attempt + 1)]
            assert status(session, experiment_id)[:2] == ("queued", 1)
    assert sweep.failed == 1 and sweep.resend == []
    assert status(session, experiment_id) == ("failed", 2, "worker lost (after 2 attempts)")


def test_a_sweep_told_not_to_detect_lost_runs_leaves_a_silent_one_running(
        session: Session) -> None:
    experiment_id = new(session)
    assert lifecycle.claim(session, experiment_id, worker="w") is not None
    age(session, experiment_id, heartbeat_at=120)  # silent, as during a database outage
    assert lifecycle.sweep(session, **SWEEP, detect_lost=False).requeued == 0
    assert status(session, experiment_id)[0] == "running"


def test_sweep_leaves_fresh_heartbeats_alone(session: Session) -> None:
    experiment_id = new(session)
    assert lifecycle.claim(session, experiment_id, worker="w") is not None
    age(session, experiment_id, heartbeat_at=5)
    assert lifecycle.sweep(session, **SWEEP).requeued == 0
    assert status(session, experiment_id)[0] == "running"


def test_orphaned_cancelling_becomes_cancelled_never_resumed(session: Session) -> None:
    experiment_id = new(session)
    assert lifecycle.claim(session, experiment_id, worker="w") is not None
    assert experiments.request_cancel(session, experiment_id) == "cancelling"
    age(session, experiment_id, heartbeat_at=120)
    sweep = lifecycle.sweep(session, **SWEEP)
    assert sweep.cancelled == 1 and sweep.resend == []
    assert status(session, experiment_id)[:2] == ("cancelled", 1)


def test_queued_past_the_grace_period_is_counted_when_resent(session: Session) -> None:
    fresh, stale, other = new(session), new(session), new(session)
    age(session, stale, updated_at=120)
    age(session, other, updated_at=120)
    assert sorted(lifecycle.queued_past_grace(session, queued_grace_s=60)) == sorted(
        [stale, other])
    # Only the ones the broker lost are re-sent: the other one still has its message.
    resent = lifecycle.count_resends(session, [stale, fresh], queued_grace_s=60)
    assert [d[:3] for d in resent] == [(stale, "cpu", 2)]
    assert lifecycle.queued_past_grace(session, queued_grace_s=60) == [other]  # grace restarts
    assert lifecycle.count_resends(session, [stale], queued_grace_s=60) == []
    assert status(session, fresh)[0] == status(session, stale)[0] == "queued"
    session.expire_all()
    counts = {i: experiments.get(session, i).dispatch_count  # type: ignore[union-attr]
              for i in (fresh, stale, other)}
    assert counts == {fresh: 1, stale: 2, other: 1}


def test_hand_back_counts_the_send_that_follows(session: Session) -> None:
    experiment_id = new(session)
    lease = lifecycle.claim(session, experiment_id, worker="w")
    assert lease is not None and lifecycle.hand_back(session, lease) == "queued"
    session.commit()
    session.expire_all()
    assert experiments.get(session, experiment_id).dispatch_count == 2  # type: ignore[union-attr]


def test_time_limit(session: Session) -> None:
    experiment_id = new(session)
    assert lifecycle.claim(session, experiment_id, worker="w") is not None
    age(session, experiment_id, started_at=7200)
    assert lifecycle.sweep(session, **SWEEP).failed == 1
    assert status(session, experiment_id)[0::2] == ("failed", "time limit")


def test_hand_back_requeues_and_keeps_the_first_start(session: Session) -> None:
    experiment_id = new(session)
    lease = lifecycle.claim(session, experiment_id, worker="w")
    assert lease is not None
    first_start = experiments.get(session, experiment_id).started_at  # type: ignore[union-attr]
    assert lifecycle.hand_back(session, lease) == "queued"
    session.commit()
    again = lifecycle.claim(session, experiment_id, worker="w2")
    assert again is not None and again.attempt == 2
    session.expire_all()
    assert experiments.get(session, experiment_id).started_at == first_start  # type: ignore[union-attr]


def test_delete_points_after_a_checkpoint(session: Session) -> None:
    experiment_id = new(session)
    metrics.insert_points(
        session, experiment_id, [MetricPoint("loss", s, 1, float(s), 0.0) for s in range(1, 11)]
    )
    lifecycle.delete_points_after(session, experiment_id, 6)
    session.commit()
    points, _ = metrics.read_page(session, experiment_id)
    assert [p.step for p in points] == [1, 2, 3, 4, 5, 6]
