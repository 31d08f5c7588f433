"""A running experiment's lease: claim, heartbeat, finish, hand back, and the reconciler's sweeps.

A worker owns an experiment through a lease, (worker, attempt), fixed by its claim. Every later
write is conditional on that lease, so a worker that was presumed dead and replaced (a "zombie")
can never overwrite the experiment or add points to it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.experiments import now
from app.db.models import Experiment
from app.db.session import metric_store


@dataclass(frozen=True)
class Lease:
    experiment_id: uuid.UUID
    worker: str
    attempt: int


def _owned(lease: Lease) -> list[Any]:
    return [Experiment.id == lease.experiment_id, Experiment.worker == lease.worker,
            Experiment.attempt == lease.attempt]


def claim(session: Session, experiment_id: uuid.UUID, *, worker: str) -> Lease | None:
    """queued → running, only if still queued: a duplicate delivery claims nothing. Commits."""
    stamp = now()
    attempt = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "queued")
        .values(status="running", worker=worker, heartbeat_at=stamp, updated_at=stamp,
                started_at=func.coalesce(Experiment.started_at, stamp),
                attempt=Experiment.attempt + 1, error=None)
        .returning(Experiment.attempt)
    ).scalar()
    session.commit()
    return Lease(experiment_id, worker, int(attempt)) if attempt is not None else None


def heartbeat(session: Session, lease: Lease) -> str | None:
    """Renew the lease; returns the status (to see cancellation), or None if the lease is lost."""
    return session.execute(
        update(Experiment).where(*_owned(lease), Experiment.status.in_(("running", "cancelling")))
        .values(heartbeat_at=now()).returning(Experiment.status)
    ).scalar()


def set_device(session: Session, lease: Lease, device: str) -> None:
    session.execute(update(Experiment).where(*_owned(lease)).values(device=device))


def finish(session: Session, lease: Lease, *, status: str, summary: dict[str, Any] | None = None,
           error: str | None = None) -> bool:
    """running/cancelling → a terminal status; a cancellation request wins over success."""
    stamp = now()
    current = session.scalar(select(Experiment.status).where(*_owned(lease)))
    if current == "cancelling" and status == "succeeded":
        status = "cancelled"
    result = session.execute(
        update(Experiment)
        .where(*_owned(lease), Experiment.status.in_(("running", "cancelling")))
        .values(status=status, summary=summary, error=error, finished_at=stamp,
                updated_at=stamp)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def hand_back(session: Session, lease: Lease) -> str | None:
    """A worker shutting down returns its experiment: running → queued for the next worker
    (cancelling → cancelled). Returns the new status, or None if the lease was lost. Queued
    again, it counts the send that the caller makes after the commit."""
    stamp = now()
    for source, target in (("running", "queued"), ("cancelling", "cancelled")):
        values: dict[str, Any] = {"status": target, "updated_at": stamp, "heartbeat_at": None}
        if target == "cancelled":
            values["finished_at"] = stamp
        else:
            values["dispatch_count"] = Experiment.dispatch_count + 1
        result = session.execute(
            update(Experiment).where(*_owned(lease), Experiment.status == source).values(**values)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            return target
    return None


def delete_points_after(session: Session, experiment_id: uuid.UUID, step: int) -> None:
    """Drop points a previous attempt wrote after its last checkpoint (they will be redone)."""
    metric_store(session).delete_after(session, experiment_id, step)


class Dispatch(NamedTuple):
    """An experiment to send to the broker (again), after the commit that counted the send."""

    experiment_id: uuid.UUID
    device: str
    dispatch_count: int
    config: dict[str, Any] = {}  # noqa: RUF012  (the stored config: re-sends group by it)


@dataclass
class Sweep:
    resend: list[Dispatch]  # experiments of lost workers, queued again
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0


def sweep(session: Session, *, heartbeat_timeout_s: float, max_attempts: int,
          max_run_s: float, detect_lost: bool = True) -> Sweep:
    """One reconciler pass over running experiments: take back those whose worker went silent
    (unless ``detect_lost`` is false), fail those over the time limit. Every change is
    conditional, so concurrent reconcilers are safe. Commits."""
    stamp = now()
    result = Sweep(resend=[])
    stale = stamp - timedelta(seconds=heartbeat_timeout_s)
    lost = select(Experiment.id, Experiment.status, Experiment.attempt, Experiment.config).where(
        Experiment.status.in_(("running", "cancelling")), Experiment.heartbeat_at < stale
    )
    for experiment_id, status, attempt, config in (session.execute(lost).all() if detect_lost
                                                   else []):
        base = update(Experiment).where(Experiment.id == experiment_id,
                                        Experiment.status == status,
                                        Experiment.heartbeat_at < stale)
        if status == "cancelling":  # nobody is left to wind it down: it is cancelled
            values = {"status": "cancelled", "finished_at": stamp}
            result.cancelled += _apply(session, base, values)
        elif attempt >= max_attempts:
            values = {"status": "failed", "finished_at": stamp,
                      "error": f"worker lost (after {attempt} attempts)"}
            result.failed += _apply(session, base, values)
        else:
            requeued = session.execute(
                base.values(status="queued", worker=None, updated_at=stamp,
                            dispatch_count=Experiment.dispatch_count + 1)
                .returning(Experiment.dispatch_count)
            ).scalar()
            if requeued is not None:
                result.requeued += 1
                result.resend.append(Dispatch(experiment_id, _device(config), int(requeued),
                                             config))
    too_long = stamp - timedelta(seconds=max_run_s)
    result.failed += _apply(
        session,
        update(Experiment).where(Experiment.status.in_(("running", "cancelling")),
                                 Experiment.started_at < too_long),
        {"status": "failed", "finished_at": stamp, "error": "time limit"},
    )
    session.commit()
    return result


def queued_past_grace(session: Session, *, queued_grace_s: float) -> list[uuid.UUID]:
    """Experiments queued and unclaimed for the grace period since they were last sent: their
    message may be lost. Whether it is, only the broker can say (``app.backlog``)."""
    waiting = now() - timedelta(seconds=queued_grace_s)
    return list(session.scalars(
        select(Experiment.id).where(Experiment.status == "queued", Experiment.updated_at < waiting)
    ))


def count_resends(session: Session, experiment_ids: list[uuid.UUID], *,
                  queued_grace_s: float) -> list[Dispatch]:
    """Count a re-send of those experiments that are still queued past the grace period, and
    commit; the caller sends them after this. The grace period starts again from now."""
    if not experiment_ids:
        return []
    stamp = now()
    rows = session.execute(
        update(Experiment)
        .where(Experiment.id.in_(experiment_ids), Experiment.status == "queued",
               Experiment.updated_at < stamp - timedelta(seconds=queued_grace_s))
        .values(updated_at=stamp, dispatch_count=Experiment.dispatch_count + 1)
        .returning(Experiment.id, Experiment.config, Experiment.dispatch_count)
    ).all()
    session.commit()
    return [Dispatch(row.id, _device(row.config), int(row.dispatch_count), row.config)
            for row in rows]


def _device(config: dict[str, Any]) -> str:
    return str(config.get("resources", {}).get("device", "auto"))


def _apply(session: Session, statement: Any, values: dict[str, Any]) -> int:
    result = session.execute(statement.values(updated_at=now(), **values))
    return int(result.rowcount)  # type: ignore[attr-defined]
