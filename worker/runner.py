"""One job on a worker: claim the experiment, train it (resuming a previous attempt's checkpoint),
and record the outcome. Every database step survives short outages (``with_retry``)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

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


def execute(experiment_id: uuid.UUID, *, settings: Settings, worker_name: str,
            dispatcher: Callable[[], Dispatcher]) -> str:
    """Run one experiment if it is still queued; returns what happened."""
    shutdown.install_job_handlers()
    url = settings.database_url
    if shutdown.worker_stopping.is_set():
        # A job process forked while its worker shuts down (it took the message its previous
        # job re-sent when handing back): leave the experiment queued for the next worker.
        log.info("experiment %s stays queued: this worker is stopping", experiment_id)
        return "skipped"

    def db(what: str, work: Callable[[Any], T]) -> T:
        def attempt() -> T:
            with session_scope(url) as session:
                return work(session)
        return with_retry(attempt, limit_s=settings.db_outage_limit_s, what=what)

    lease = db("claim", lambda s: lifecycle.claim(s, experiment_id, worker=worker_name))
    if lease is None:  # a duplicate delivery, or cancelled/deleted while queued
        log.info("%s skipped %s: not queued any more", worker_name, experiment_id)
        return "skipped"
    log.info("%s claimed %s (attempt %d): running", worker_name, experiment_id, lease.attempt)
    row = db("load", lambda s: experiments.get(s, experiment_id))
    assert row is not None and row.started_at is not None
    config = ExperimentConfig.model_validate(row.config)
    deadline = row.started_at.timestamp() + settings.max_run_s

    # A previous attempt may have left a checkpoint: resume from it, and drop the points it wrote
    # after that checkpoint, so every series ends up gapless and free of duplicates.
    checkpoint = settings.checkpoint_path(experiment_id)
    resume = checkpoint if checkpoint.is_file() else None
    resume_step = checkpoint_step(resume) if resume is not None else 0
    db("drop stale points", lambda s: lifecycle.delete_points_after(s, experiment_id, resume_step))

    sink = MetricSink(url, lease, flush_every_s=settings.metric_flush_s,
                      outage_limit_s=settings.db_outage_limit_s)

    def should_stop() -> bool:
        return sink.should_stop() or shutdown.requested.is_set() or time.time() > deadline

    status, summary, error = "failed", None, None
    try:
        device = resolve_device(config.resources.device, settings.worker_device)
        db("record device", lambda s: lifecycle.set_device(s, lease, str(device)))
        # Checkpoints are staged, and published by the sink once their points are written.
        result = run_job(config, on_metrics=sink.put, should_stop=should_stop,
                         checkpoint_path=sink.staged(checkpoint), resume_from=resume,
                         before_checkpoint=sink.before_checkpoint, device_override=str(device),
                         data_dir=settings.data_dir, flush_every_s=settings.metric_flush_s)
        status = result.status
        summary = result.summary.model_dump(mode="json")
    except Exception as exc:  # the job fails; the worker lives on
        log.exception("experiment %s failed", experiment_id)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        sink.close()

    if sink.lease_lost:
        return "lost"  # another worker owns it now; write nothing
    if sink.error is not None:
        status, error = "failed", sink.error
    elif status == "cancelled" and not sink.cancel_requested:
        if time.time() > deadline:
            status, error = "failed", "time limit"
        elif shutdown.requested.is_set():
            return _hand_back(db, lease, config, settings, dispatcher)
    try:
        db("finish", lambda s: lifecycle.finish(s, lease, status=status, summary=summary,
                                               error=error))
    except DatabaseOutageError:
        log.exception("could not record the end of %s; the reconciler will take it back",
                      experiment_id)
        return "unrecorded"
    steps = summary.get("steps") if summary else None
    log.info("experiment %s %s%s", experiment_id, status,
             f" after {steps} steps" if steps is not None else f": {error}" if error else "")
    return status


def _hand_back(db: Callable[..., Any], lease: Lease, config: ExperimentConfig,
               settings: Settings, dispatcher: Callable[[], Dispatcher]) -> str:
    """Shutting down: queue the experiment again for the next worker (it resumes from here)."""
    new_status = db("hand back", lambda s: lifecycle.hand_back(s, lease))
    log.info("experiment %s handed back (%s): the worker is stopping", lease.experiment_id,
             new_status)
    if new_status == "queued":
        try:
            dispatcher().send(lease.experiment_id, queue_for(config.resources.device, settings))
        except Exception:  # the reconciler re-sends queued experiments
            log.exception("could not re-send %s", lease.experiment_id)
    return "handed back"
