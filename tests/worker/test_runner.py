"""worker.runner.execute in-process on SQLite: claim, train, record; skip, cancel, hand back,
resume."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from app.core.config import Settings
from app.db import experiments, lifecycle, metrics
from app.db.session import session_scope
from tests.api.helpers import FakeDispatcher
from tests.waiting import wait_until
from worker import shutdown
from worker.runner import execute
from worker.training.presets import build_config

SMALL: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "model": {"hidden_layers": [32]},
    "optimizer": {"learning_rate": 0.1},
    "training": {"epochs": 3, "batch_size": 32},
}


def create(settings: Settings, body: dict[str, Any] = SMALL) -> uuid.UUID:
    with session_scope(settings.database_url) as session:
        row, _ = experiments.create(
            session, config=build_config(body).model_dump(mode="json"), tags=[]
        )
        return row.id


def row(settings: Settings, experiment_id: uuid.UUID) -> Any:
    with session_scope(settings.database_url) as session:
        return experiments.get(session, experiment_id)


def loss_steps(settings: Settings, experiment_id: uuid.UUID) -> list[int]:
    with session_scope(settings.database_url) as session:
        points, _ = metrics.read_page(session, experiment_id, names=["loss"], limit=100_000)
    return [p.step for p in points]


def run(
    settings: Settings,
    experiment_id: uuid.UUID,
    dispatcher: FakeDispatcher | None = None,
    worker: str = "w",
) -> str:
    fake = dispatcher or FakeDispatcher()
    return execute(experiment_id, settings=settings, worker_name=worker, dispatcher=lambda: fake)


def test_success_is_recorded_with_every_step(settings: Settings) -> None:
    experiment_id = create(settings)
    assert run(settings, experiment_id) == "succeeded"
    done = row(settings, experiment_id)
    assert (done.status, done.attempt, done.worker, done.device) == ("succeeded", 1, "w", "cpu")
    assert done.summary["epochs_completed"] == 3
    assert settings.checkpoint_path(experiment_id).is_file()
    assert loss_steps(settings, experiment_id) == list(range(1, done.summary["steps"] + 1))


def test_duplicate_delivery_is_skipped(settings: Settings) -> None:
    experiment_id = create(settings)
    run(settings, experiment_id)
    assert run(settings, experiment_id) == "skipped"
    assert row(settings, experiment_id).attempt == 1


def test_bad_config_fails_cleanly_with_a_reason(settings: Settings) -> None:
    experiment_id = create(
        settings, {**SMALL, "dataset": {"name": "digits", "validation_size": 1500}}
    )
    assert run(settings, experiment_id) == "failed"
    assert "validation_size" in row(settings, experiment_id).error


def _cancel_when_running(settings: Settings, experiment_id: uuid.UUID) -> None:
    wait_until(lambda: loss_steps(settings, experiment_id), "the first points")
    with session_scope(settings.database_url) as session:
        experiments.request_cancel(session, experiment_id)


def test_cancel_while_running(settings: Settings) -> None:
    # 500 epochs: only the cancel request can end this run in a test's time (an unheeded one
    # shows as a hang, caught by wait_until's guard and pytest's).
    experiment_id = create(settings, {**SMALL, "training": {"epochs": 500, "batch_size": 8}})
    canceller = threading.Thread(target=_cancel_when_running, args=(settings, experiment_id))
    canceller.start()
    assert run(settings, experiment_id) == "cancelled"
    canceller.join()
    done = row(settings, experiment_id)
    assert done.status == "cancelled" and done.summary["epochs_completed"] < 500


def test_shutdown_hands_back_and_the_next_attempt_resumes(settings: Settings) -> None:
    body = {**SMALL, "training": {"epochs": 40, "batch_size": 8}}
    experiment_id = create(settings, body)
    dispatcher = FakeDispatcher()

    def stop_soon() -> None:
        wait_until(lambda: len(loss_steps(settings, experiment_id)) >= 300, "300 steps")
        shutdown.requested.set()

    threading.Thread(target=stop_soon).start()
    assert run(settings, experiment_id, dispatcher) == "handed back"
    assert row(settings, experiment_id).status == "queued"
    assert dispatcher.sent == [(experiment_id, "cpu")]
    stopped_at = max(loss_steps(settings, experiment_id))
    shutdown.requested.clear()
    assert run(settings, experiment_id, worker="w2") == "succeeded"
    done = row(settings, experiment_id)
    assert done.attempt == 2 and done.summary["epochs_completed"] == 40
    steps = loss_steps(settings, experiment_id)
    assert steps == list(range(1, done.summary["steps"] + 1)) and stopped_at < steps[-1]


def test_a_crashed_attempt_resumes_from_its_last_checkpoint(settings: Settings) -> None:
    experiment_id = create(settings, {**SMALL, "training": {"epochs": 4, "batch_size": 32}})
    run(settings, experiment_id)  # leaves a checkpoint at the end of epoch 4
    full = loss_steps(settings, experiment_id)
    # Pretend attempt 1 died after writing points past an older checkpoint: requeue it.
    with session_scope(settings.database_url) as session:
        from sqlalchemy import update

        from app.db.models import Experiment

        session.execute(
            update(Experiment).where(Experiment.id == experiment_id).values(status="queued")
        )
    assert run(settings, experiment_id, worker="w2") == "succeeded"
    # Resumed at the end: nothing to redo, and no point doubled or lost.
    assert loss_steps(settings, experiment_id) == full
    with session_scope(settings.database_url) as session:
        assert lifecycle.claim(session, experiment_id, worker="late") is None


def test_a_job_forked_while_its_worker_stops_starts_nothing(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It took the message its predecessor re-sent when handing back: the experiment stays
    queued for the next worker, and this one exits without a job to kill."""
    experiment_id = create(settings)
    monkeypatch.setattr(shutdown, "worker_stopping", threading.Event())
    shutdown.worker_stopping.set()
    assert run(settings, experiment_id) == "skipped"
    found = row(settings, experiment_id)
    assert found.status == "queued" and found.attempt == 0
