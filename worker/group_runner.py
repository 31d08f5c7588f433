"""A fused group job: several experiments trained together as one stacked network.

Every member goes through the steps of a single experiment (``worker.runner``): its own claim
(a member no longer queued — cancelled, deleted, claimed elsewhere — is dropped from the group
here), its own lease, heartbeat and cancel flag (its metric sink), its own checkpoint, resume
point and outcome. Only the training is shared (``group_job.run_group_job``).

Members resume together only from checkpoints taken at the same step (a group writes them
together at each epoch's end); members claimed at different steps — a crash between two of the
group's checkpoint writes, or a member that ran solo meanwhile — are split into sub-groups
that train one after another in this job, each member heart-beating all along.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy.orm import Session

from app.core.config import Settings
from app.db import lifecycle
from app.dispatch import Dispatcher, plan_groups, send_job
from worker.runner import Attempt, Database, begin, claim, conclude, stopping, train_alone
from worker.training.device import resolve_device
from worker.training.fusion import fusion_key
from worker.training.group_job import GroupMember, run_group_job

log = logging.getLogger(__name__)
Outcome = tuple[str, dict[str, Any] | None, str | None]  # status, summary, error


def execute_group(experiment_ids: Sequence[uuid.UUID], *, settings: Settings, worker_name: str,
                  dispatcher: Callable[[], Dispatcher]) -> str:
    """Run the members still queued; returns what happened to each, counted."""
    if stopping(f"group {[str(i) for i in experiment_ids]}"):
        return "skipped"
    db = Database(settings)
    attempts: list[Attempt] = []
    try:
        for experiment_id in experiment_ids:
            # Begun right after its claim: its sink heart-beats before the next member's claim.
            lease = claim(db, experiment_id, worker_name)
            if lease is not None:
                attempts.append(begin(db, settings, lease))
    except BaseException:
        for started in attempts:
            started.sink.close()
        raise
    if not attempts:
        return "skipped"
    if len(attempts) == 1:  # the others were gone: this one takes the solo path
        return train_alone(db, settings, attempts[0], dispatcher)
    log.info("%s training a fused group of %d (of %d sent)", worker_name, len(attempts),
             len(experiment_ids))
    outcomes: list[str] = []
    for part in _parts(attempts):
        outcomes += _train(db, settings, part)
    requeued = [(a.lease.experiment_id, a.config.model_dump(mode="json"))
                for a in attempts if a.requeued]
    for job in plan_groups(settings, requeued):
        try:
            send_job(dispatcher(), job)
        except Exception:  # the reconciler re-sends queued experiments
            log.exception("could not re-send %s", job[1])
    counts = {o: outcomes.count(o) for o in sorted(set(outcomes))}
    return ", ".join(f"{n} {o}" for o, n in counts.items())


def _parts(attempts: list[Attempt]) -> list[list[Attempt]]:
    """Members that can train as one stack: the same shared config and the same resume step."""
    parts: dict[tuple[str, int], list[Attempt]] = {}
    for attempt in attempts:
        parts.setdefault((fusion_key(attempt.config), attempt.resume_step), []).append(attempt)
    if len(parts) > 1:
        log.info("group split into %d parts by resume step: %s", len(parts),
                 [(step, len(p)) for (_, step), p in parts.items()])
    return list(parts.values())


def _train(db: Database, settings: Settings, part: list[Attempt]) -> list[str]:
    """Train one part together, then conclude each member as a single experiment."""
    outcomes: list[Outcome]
    try:
        device = resolve_device(part[0].config.resources.device, settings.worker_device)
        db("record device", lambda s: _set_devices(s, part, str(device)))
        results = run_group_job(
            [GroupMember(a.config, a.sink.put, should_stop=a.should_stop,
                         checkpoint_path=a.sink.staged(a.checkpoint), resume_from=a.resume,
                         before_checkpoint=a.sink.before_checkpoint) for a in part],
            device_override=str(device), data_dir=settings.data_dir,
            flush_every_s=settings.metric_flush_s,
        )
        outcomes = [(r.status, r.summary.model_dump(mode="json"), None) for r in results]
    except Exception as exc:  # the whole part fails; the worker lives on
        log.exception("group %s failed", [str(a.lease.experiment_id) for a in part])
        outcomes = [("failed", None, f"{type(exc).__name__}: {exc}")] * len(part)
    finally:
        for attempt in part:
            attempt.sink.close()
    return [conclude(db, a, *outcome) for a, outcome in zip(part, outcomes, strict=True)]


def _set_devices(session: Session, part: list[Attempt], device: str) -> None:
    for attempt in part:
        lifecycle.set_device(session, attempt.lease, device)
