"""One job on a worker: claim the experiment, train it, record the outcome."""

from __future__ import annotations

import logging
import uuid

from app.core.config import Settings
from app.db import experiments
from app.db.session import session_scope
from worker.sink import MetricSink
from worker.training.config import ExperimentConfig
from worker.training.device import resolve_device
from worker.training.job import run_job

log = logging.getLogger(__name__)


def execute(experiment_id: uuid.UUID, *, settings: Settings, worker_name: str) -> str:
    """Run one experiment if it is still queued; returns the final status (or "skipped")."""
    url = settings.database_url
    with session_scope(url) as session:
        if not experiments.claim(session, experiment_id, worker=worker_name):
            return "skipped"  # a duplicate delivery, or cancelled/deleted while queued
        row = experiments.get(session, experiment_id)
        assert row is not None
        config = ExperimentConfig.model_validate(row.config)

    sink = MetricSink(
        url,
        experiment_id,
        flush_every_s=settings.metric_flush_s,
        outage_limit_s=settings.db_outage_limit_s,
    )
    checkpoint = settings.checkpoint_path(experiment_id)
    status, summary, error, has_checkpoint = "failed", None, None, False
    try:
        device = resolve_device(config.resources.device, settings.worker_device)
        with session_scope(url) as session:
            experiments.set_device(session, experiment_id, str(device))
        result = run_job(
            config,
            on_metrics=sink.put,
            should_stop=sink.should_stop,
            checkpoint_path=checkpoint,
            device_override=str(device),
            data_dir=settings.data_dir,
            flush_every_s=settings.metric_flush_s,
        )
        status = result.status
        summary = result.summary.model_dump(mode="json")
        has_checkpoint = result.checkpoint_written
    except Exception as exc:  # the job fails; the worker lives on
        log.exception("experiment %s failed", experiment_id)
        error = f"{type(exc).__name__}: {exc}"
    finally:
        sink.close()
    if sink.error is not None:
        status, error = "failed", sink.error
    with session_scope(url) as session:
        experiments.finish(
            session,
            experiment_id,
            status=status,
            summary=summary,
            error=error,
            has_checkpoint=has_checkpoint,
        )
    return status
