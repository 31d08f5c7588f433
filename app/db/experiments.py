"""Experiment rows: creation, listing, state changes. Every state change is a conditional update,
so two processes racing on one experiment cannot both win."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Experiment, ExperimentTag

ACTIVE = ("queued", "running", "cancelling")
FINISHED = ("succeeded", "diverged", "failed", "cancelled")


def now() -> datetime:
    return datetime.now(UTC)


class IdempotencyConflictError(Exception):
    """The Idempotency-Key was used before with a different request body."""


class InvalidTransitionError(Exception):
    def __init__(self, status: str, action: str) -> None:
        super().__init__(f"cannot {action} an experiment that is {status}")
        self.status = status


@dataclass(frozen=True)
class Page:
    items: list[Experiment]
    next_cursor: str | None


def create(
    session: Session,
    *,
    config: dict[str, Any],
    tags: list[str],
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[Experiment, bool]:
    """Insert a queued experiment and commit. Returns (experiment, created)."""
    if idempotency_key is not None:
        previous = _by_idempotency_key(session, idempotency_key)
        if previous is not None:
            return _same_request(previous, request_hash), False
    stamp = now()
    experiment = Experiment(
        id=uuid.uuid4(), name=config["name"], status="queued", config=config, created_at=stamp,
        updated_at=stamp, attempt=0, has_checkpoint=False, idempotency_key=idempotency_key,
        request_hash=request_hash,
    )
    session.add(experiment)
    session.add_all(ExperimentTag(experiment_id=experiment.id, tag=t) for t in dict.fromkeys(tags))
    try:
        session.commit()
    except IntegrityError:
        # Two requests with one new Idempotency-Key raced: the other one won; answer with it.
        session.rollback()
        previous = _by_idempotency_key(session, idempotency_key or "")
        if previous is None:
            raise
        return _same_request(previous, request_hash), False
    return experiment, True


def _by_idempotency_key(session: Session, key: str) -> Experiment | None:
    return session.scalars(select(Experiment).where(Experiment.idempotency_key == key)).first()


def _same_request(previous: Experiment, request_hash: str | None) -> Experiment:
    if previous.request_hash != request_hash:
        raise IdempotencyConflictError(
            "this Idempotency-Key was already used with a different request body"
        )
    return previous


def get(session: Session, experiment_id: uuid.UUID) -> Experiment | None:
    return session.get(Experiment, experiment_id)


def tags_of(session: Session, experiment_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    result: dict[uuid.UUID, list[str]] = {i: [] for i in experiment_ids}
    if experiment_ids:
        rows = session.execute(
            select(ExperimentTag.experiment_id, ExperimentTag.tag)
            .where(ExperimentTag.experiment_id.in_(experiment_ids))
            .order_by(ExperimentTag.tag)
        )
        for experiment_id, tag in rows:
            result[experiment_id].append(tag)
    return result


def encode_cursor(experiment: Experiment) -> str:
    raw = f"{experiment.created_at.isoformat()}|{experiment.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Raises ValueError for a cursor this service did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, ident = raw.partition("|")
        stamp = datetime.fromisoformat(created)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid cursor") from exc


def list_page(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    status: str | None = None,
    tag: str | None = None,
    name: str | None = None,
) -> Page:
    """Newest first, keyset-paginated on (created_at, id)."""
    query = select(Experiment)
    if status is not None:
        query = query.where(Experiment.status == status)
    if name is not None:
        query = query.where(Experiment.name == name)
    if tag is not None:
        query = query.where(
            exists().where(ExperimentTag.experiment_id == Experiment.id, ExperimentTag.tag == tag)
        )
    if cursor is not None:
        created, ident = decode_cursor(cursor)
        query = query.where(
            (Experiment.created_at < created)
            | ((Experiment.created_at == created) & (Experiment.id < ident))
        )
    query = query.order_by(Experiment.created_at.desc(), Experiment.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    items = rows[:limit]
    return Page(items, encode_cursor(items[-1]) if more and items else None)


def claim(session: Session, experiment_id: uuid.UUID, *, worker: str) -> bool:
    """queued → running, only if still queued: a duplicate delivery claims nothing."""
    stamp = now()
    result = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "queued")
        .values(status="running", worker=worker, started_at=stamp, heartbeat_at=stamp,
                updated_at=stamp, attempt=Experiment.attempt + 1, error=None)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_device(session: Session, experiment_id: uuid.UUID, device: str) -> None:
    session.execute(
        update(Experiment).where(Experiment.id == experiment_id)
        .values(device=device, updated_at=now())
    )
    session.commit()


def heartbeat(session: Session, experiment_id: uuid.UUID) -> str | None:
    """Record that the worker is alive; returns the current status (to see cancellation)."""
    stamp = now()
    session.execute(
        update(Experiment).where(Experiment.id == experiment_id)
        .values(heartbeat_at=stamp)
    )
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def finish(
    session: Session,
    experiment_id: uuid.UUID,
    *,
    status: str,
    summary: dict[str, Any] | None = None,
    error: str | None = None,
    has_checkpoint: bool = False,
) -> None:
    """running/cancelling → a terminal status. A cancellation request wins over success."""
    stamp = now()
    current = session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))
    if current == "cancelling" and status == "succeeded":
        status = "cancelled"
    session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status.in_(("running", "cancelling")))
        .values(status=status, summary=summary, error=error, finished_at=stamp,
                updated_at=stamp, has_checkpoint=has_checkpoint)
    )
    session.commit()


def request_cancel(session: Session, experiment_id: uuid.UUID) -> str:
    """queued → cancelled at once; running → cancelling (the worker winds down). Returns status."""
    stamp = now()
    for source, target in (("queued", "cancelled"), ("running", "cancelling")):
        values: dict[str, Any] = {"status": target, "updated_at": stamp}
        if target == "cancelled":
            values["finished_at"] = stamp
        result = session.execute(
            update(Experiment)
            .where(Experiment.id == experiment_id, Experiment.status == source)
            .values(**values)
        )
        if result.rowcount:  # type: ignore[attr-defined]
            session.commit()
            return target
    current = session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))
    if current == "cancelling":
        return current
    raise InvalidTransitionError(current or "missing", "cancel")


def delete_finished(session: Session, experiment_id: uuid.UUID) -> None:
    """Delete a finished experiment and (by cascade, or explicitly on SQLite) its metrics."""
    from app.db.models import MetricPoint

    result = session.execute(
        delete(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status.in_(FINISHED))
        .returning(Experiment.id)
    )
    if result.first() is None:
        current = session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))
        session.rollback()
        raise InvalidTransitionError(current or "missing", "delete")
    session.execute(delete(MetricPoint).where(MetricPoint.experiment_id == experiment_id))
    session.execute(delete(ExperimentTag).where(ExperimentTag.experiment_id == experiment_id))
    session.commit()
