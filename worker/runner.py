"""One job on a worker: claim the experiment, train it (resuming a previous attempt's checkpoint),
and record the outcome. Every database step survives short outages (``with_retry``).

The steps around training — ``claim``, ``begin`` (load, resume point, metric sink) and
``conclude`` (the outcome, or a hand-back) — are per experiment, and shared with the fused group
job (``worker.group_runner``): each member of a group is claimed, begun and concluded exactly
as a single experiment is.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db import experiments, lifecycle
from app.db.lifecycle import Lease
from app.db.session import session_scope
from app.dispatch import Dispatcher, queue_for
from worker import shutdown
from worker.dbretry import DatabaseOutageError, with_retry
from worker.sink import MetricSink
from worker.training.checkpoint import checkpoint_step
from worker.training.config import ExperimentConfig
from worker.training.device import resolve_device
from worker.training.job import run_job

log = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    """``db(what, work)``: run ``work`` in a session, retried through short outages."""

    def __init__(self, settings: Settings) -> None:
        self.url, self.limit_s = settings.database_url, settings.db_outage_limit_s

    def __call__(self, what: str, work: Callable[[Session], T]) -> T:
        def attempt() -> T:
            with session_scope(self.url) as session:
                return work(session)
        return with_retry(attempt, limit_s=self.limit_s, what=what)


@dataclass
class Attempt:
    """A claimed experiment in a job: its lease, config, resume point and metric sink."""

    lease: Lease
    config: ExperimentConfig
    deadline: float
    checkpoint: Path
    resume: Path | None
    resume_step: int
    sink: MetricSink
    requeued: bool = False  # handed back and queued again: the caller re-sends it

    def should_stop(self) -> bool:
        return (self.sink.should_stop() or shutdown.requested.is_set()
                or time.time() > self.deadline)


def stopping(what: object) -> bool:
    """A job process forked while its worker shuts down (it took the message its previous job
    re-sent when handing back) starts nothing: the experiments stay queued for the next worker."""
    shutdown.install_job_handlers()
    if shutdown.worker_stopping.is_set():
        log.info("%s stays queued: this worker is stopping", what)
        return True
    return False


def claim(db: Database, experiment_id: uuid.UUID, worker_name: str) -> Lease | None:
    lease = db("claim", lambda s: lifecycle.claim(s, experiment_id, worker=worker_name))
    if lease is None:  # a duplicate delivery, or cancelled/deleted/claimed elsewhere
        log.info("%s skipped %s: not queued any more", worker_name, experiment_id)
    else:
        log.info("%s claimed %s (attempt %d): running", worker_name, experiment_id,
                 lease.attempt)
    return lease


def begin(db: Database, settings: Settings, lease: Lease) -> Attempt:
    """Load the claimed experiment, find its resume point, and start its metric sink."""
    experiment_id = lease.experiment_id
    row = db("load", lambda s: experiments.get(s, experiment_id))
    assert row is not None and row.started_at is not None
    config = ExperimentConfig.model_validate(row.config)
    # A previous attempt may have left a checkpoint: resume from it, and drop the points it wrote
    # after that checkpoint, so every series ends up gapless and free of duplicates.
    checkpoint = settings.checkpoint_path(experiment_id)
    resume = checkpoint if checkpoint.is_file() else None
    resume_step = checkpoint_step(resume) if resume is not None else 0
    db("drop stale points", lambda s: lifecycle.delete_points_after(s, experiment_id, resume_step))
    sink = MetricSink(settings.database_url, lease, flush_every_s=settings.metric_flush_s,
                      outage_limit_s=settings.db_outage_limit_s)
    return Attempt(lease, config, row.started_at.timestamp() + settings.max_run_s, checkpoint,
                   resume, resume_step, sink)


def conclude(db: Database, attempt: Attempt, status: str, summary: dict[str, Any] | None,
             error: str | None) -> str:
    """Record how the attempt ended (its sink closed); returns what happened."""
    sink, lease = attempt.sink, attempt.lease
    if sink.lease_lost:
        return "lost"  # another worker owns it now; write nothing
    if sink.error is not None:
        status, error = "failed", sink.error
    elif status == "cancelled" and not sink.cancel_requested:
        if time.time() > attempt.deadline:
            status, error = "failed", "time limit"
        elif shutdown.requested.is_set():
            # Shutting down: queue it again for the next worker (it resumes from here).
            new_status = db("hand back", lambda s: lifecycle.hand_back(s, lease))
            attempt.requeued = new_status == "queued"
            log.info("experiment %s handed back (%s): the worker is stopping",
                     lease.experiment_id, new_status)
            return "handed back"
    try:
        db("finish", lambda s: lifecycle.finish(s, lease, status=status, summary=summary,
                                               error=error))
    except DatabaseOutageError:
        log.exception("could not record the end of %s; the reconciler will take it back",
                      lease.experiment_id)
        return "unrecorded"
    steps = summary.get("steps") if summary else None
    log.info("experiment %s %s%s", lease.experiment_id, status,
             f" after {steps} steps" if steps is not None else f": {error}" if error else "")
    return status


def execute(experiment_id: uuid.UUID, *, settings: Settings, worker_name: str,
            dispatcher: Callable[[], Dispatcher]) -> str:
    """Run one experiment if it is still queued; returns what happened."""
    if stopping(f"experiment {experiment_id}"):
        return "skipped"
    db = Database(settings)
    lease = claim(db, experiment_id, worker_name)
    if lease is None:
        return "skipped"
    return run_claimed(db, settings, lease, dispatcher)


def run_claimed(db: Database, settings: Settings, lease: Lease,
                dispatcher: Callable[[], Dispatcher]) -> str:
    return train_alone(db, settings, begin(db, settings, lease), dispatcher)


def train_alone(db: Database, settings: Settings, attempt: Attempt,
                dispatcher: Callable[[], Dispatcher]) -> str:
    """Train one begun experiment on its own (the solo path)."""
    lease, config, sink = attempt.lease, attempt.config, attempt.sink
    status, summary, error = "failed", None, None
    try:
        device = resolve_device(config.resources.device, settings.worker_device)
        db("record device", lambda s: lifecycle.set_device(s, lease, str(device)))
        # Checkpoints are staged, and published by the sink once their points are written.
        result = run_job(config, on_metrics=sink.put, should_stop=attempt.should_stop,
                         checkpoint_path=sink.staged(attempt.checkpoint),
                         resume_from=attempt.resume, before_checkpoint=sink.before_checkpoint,
                         device_override=str(device),
                         data_dir=settings.data_dir, flush_every_s=settings.metric_flush_s)
        status = result.status
        summary = result.summary.model_dump(mode="json")
    except Exception as exc:  # the job fails; the worker lives on
        log.exception("experiment %s failed", lease.experiment_id)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        sink.close()
    outcome = conclude(db, attempt, status, summary, error)
    if attempt.requeued:
        try:
            dispatcher().send(lease.experiment_id, queue_for(config.resources.device, settings))
        except Exception:  # the reconciler re-sends queued experiments
            log.exception("could not re-send %s", lease.experiment_id)
    return outcome
