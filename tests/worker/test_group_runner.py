"""worker.group_runner.execute_group in-process on SQLite: per-member claims, outcomes, cancel,
hand back and resume."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from app.core.config import Settings, staged_path
from app.db import experiments, metrics
from app.db.session import session_scope
from tests.api.helpers import FakeDispatcher
from tests.waiting import wait_until
from tests.worker.test_runner import SMALL, create, loss_steps, row, run
from worker import shutdown
from worker.group_runner import execute_group


def member(lr: float, seed: int = 0, epochs: int = 3, batch_size: int = 32) -> dict[str, Any]:
    return {**SMALL, "optimizer": {"learning_rate": lr},
            "training": {"epochs": epochs, "batch_size": batch_size, "seed": seed}}


def run_group(settings: Settings, ids: list[uuid.UUID],
              dispatcher: FakeDispatcher | None = None, worker: str = "g") -> str:
    fake = dispatcher or FakeDispatcher()
    return execute_group(ids, settings=settings, worker_name=worker, dispatcher=lambda: fake)


def losses(settings: Settings, experiment_id: uuid.UUID) -> list[float]:
    with session_scope(settings.database_url) as session:
        points, _ = metrics.read_page(session, experiment_id, names=["loss"], limit=100_000)
    return [p.value for p in points]


def test_a_group_records_each_member_as_its_solo_run(settings: Settings) -> None:
    bodies = [member(0.05, seed=1), member(0.1, seed=2), member(0.2, seed=1)]
    ids = [create(settings, b) for b in bodies]
    assert run_group(settings, ids) == "3 succeeded"
    solo = [create(settings, b) for b in bodies]
    for experiment_id in solo:
        assert run(settings, experiment_id) == "succeeded"
    for fused, alone in zip(ids, solo, strict=True):
        done = row(settings, fused)
        assert (done.status, done.attempt, done.worker, done.device) == ("succeeded", 1, "g", "cpu")
        assert loss_steps(settings, fused) == list(range(1, done.summary["steps"] + 1))
        assert settings.checkpoint_path(fused).is_file()
        assert losses(settings, fused) == pytest.approx(losses(settings, alone), rel=1e-4)


def test_members_no_longer_queued_are_dropped(settings: Settings) -> None:
    ids = [create(settings, member(lr)) for lr in (0.05, 0.1, 0.2)]
    with session_scope(settings.database_url) as session:
        experiments.request_cancel(session, ids[1])  # queued → cancelled
    assert run_group(settings, ids) == "2 succeeded"
    assert [row(settings, i).status for i in ids] == ["succeeded", "cancelled", "succeeded"]
    assert row(settings, ids[1]).attempt == 0 and loss_steps(settings, ids[1]) == []
    assert run_group(settings, ids) == "skipped"  # a redelivery claims nothing


def test_one_member_left_takes_the_solo_path(settings: Settings) -> None:
    ids = [create(settings, member(lr)) for lr in (0.05, 0.1)]
    assert run(settings, ids[0]) == "succeeded"
    assert run_group(settings, ids) == "succeeded"
    assert row(settings, ids[1]).status == "succeeded"


def test_cancelling_one_member_leaves_the_others_running(settings: Settings) -> None:
    # 500 epochs: only the cancel requests can end this in a test's time.
    ids = [create(settings, member(lr, epochs=500, batch_size=8)) for lr in (0.05, 0.1, 0.2)]

    def cancel_one_then_all() -> None:
        # No database read in this process before training started: a read holding SQLite's
        # locks while the job forks its members' writers would deadlock them (not so in a
        # worker, where the job process has no such threads).
        wait_until(settings.checkpoint_path(ids[0]).is_file, "the first checkpoint")
        with session_scope(settings.database_url) as session:
            experiments.request_cancel(session, ids[0])
        # The others go on: they gain steps after the cancelled member stopped.
        wait_until(lambda: row(settings, ids[0]).status == "cancelling"
                   and len(loss_steps(settings, ids[1])) > len(loss_steps(settings, ids[0])) + 200,
                   "the others to go on")
        with session_scope(settings.database_url) as session:
            for other in ids[1:]:
                experiments.request_cancel(session, other)

    canceller = threading.Thread(target=cancel_one_then_all)
    canceller.start()
    assert run_group(settings, ids) == "3 cancelled"
    canceller.join()
    first, second = (row(settings, i) for i in ids[:2])
    assert first.summary["steps"] + 200 < second.summary["steps"]
    for experiment_id in ids:
        assert loss_steps(settings, experiment_id) == list(
            range(1, row(settings, experiment_id).summary["steps"] + 1))


def test_shutdown_hands_the_group_back_and_it_resumes_together(settings: Settings) -> None:
    bodies = [member(lr, epochs=12, batch_size=8) for lr in (0.05, 0.1)]
    ids = [create(settings, b) for b in bodies]
    dispatcher = FakeDispatcher()

    def taken(experiment_id: uuid.UUID) -> bool:
        # Staged at the epoch end, published once its points are stored, which may be epochs
        # later (the sink never makes an epoch end wait): either way, a checkpoint exists.
        path = settings.checkpoint_path(experiment_id)
        return path.is_file() or staged_path(path).is_file()

    def stop_soon() -> None:  # after the first epoch's checkpoints (no reads: see above)
        wait_until(lambda: all(taken(i) for i in ids), "the first checkpoints")
        shutdown.requested.set()

    threading.Thread(target=stop_soon).start()
    assert run_group(settings, ids, dispatcher) == "2 handed back"
    assert [row(settings, i).status for i in ids] == ["queued", "queued"]
    assert dispatcher.groups == [ids]  # re-sent as one group
    shutdown.requested.clear()
    assert run_group(settings, ids, worker="g2") == "2 succeeded"
    reference = [create(settings, b) for b in bodies]
    assert run_group(settings, reference) == "2 succeeded"
    for resumed, whole in zip(ids, reference, strict=True):
        done = row(settings, resumed)
        assert done.attempt == 2 and done.summary["epochs_completed"] == 12
        assert loss_steps(settings, resumed) == list(range(1, done.summary["steps"] + 1))
        assert losses(settings, resumed) == pytest.approx(losses(settings, whole), rel=1e-4)


def test_members_at_different_steps_train_in_parts(settings: Settings) -> None:
    ids = [create(settings, member(lr)) for lr in (0.05, 0.1)]
    assert run(settings, ids[0]) == "succeeded"  # a checkpoint at its last step
    full = loss_steps(settings, ids[0])
    with session_scope(settings.database_url) as session:
        from sqlalchemy import update

        from app.db.models import Experiment

        session.execute(update(Experiment).where(Experiment.id == ids[0])
                        .values(status="queued"))
    assert run_group(settings, ids) == "2 succeeded"
    assert loss_steps(settings, ids[0]) == full  # resumed at its end: nothing redone
    done = row(settings, ids[1])
    assert loss_steps(settings, ids[1]) == list(range(1, done.summary["steps"] + 1))
