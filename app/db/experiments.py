"""Experiment rows: creation, listing, state changes. Every state change is a conditional update,
so two processes racing on one experiment cannot both win. Hands out ``ExperimentRecord``s."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import Experiment, ExperimentTag
from app.db.records import ExperimentRecord
from app.db.session import metric_store

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
    items: list[ExperimentRecord]
    next_cursor: str | None


def create(
    session: Session,
    *,
    config: dict[str, Any],
    tags: list[str],
    owner: str = "local",
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> tuple[ExperimentRecord, bool]:
    """Insert a queued experiment and commit. Returns (experiment, created).

    Idempotency keys are scoped to the owner: one owner's key never reveals another's experiment.
    """
    if idempotency_key is not None:
        idempotency_key = f"{owner}:{idempotency_key}"
        previous = _by_idempotency_key(session, idempotency_key)
        if previous is not None:
            return _same_request(previous, request_hash), False
    stamp = now()
    experiment = Experiment(
        id=uuid.uuid4(), name=config["name"], owner=owner, status="queued", config=config,
        created_at=stamp, updated_at=stamp, attempt=0,
        dispatch_count=1,  # the caller sends it right after this commit
        idempotency_key=idempotency_key, request_hash=request_hash,
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
    return ExperimentRecord.of(experiment), True


def _by_idempotency_key(session: Session, key: str) -> Experiment | None:
    return session.scalars(select(Experiment).where(Experiment.idempotency_key == key)).first()


def _same_request(previous: Experiment, request_hash: str | None) -> ExperimentRecord:
    if previous.request_hash != request_hash:
        raise IdempotencyConflictError(
            "this Idempotency-Key was already used with a different request body"
        )
    return ExperimentRecord.of(previous)


def get(session: Session, experiment_id: uuid.UUID) -> ExperimentRecord | None:
    """The experiment as stored now (never a copy the session read earlier)."""
    row = session.get(Experiment, experiment_id, populate_existing=True)
    return ExperimentRecord.of(row) if row is not None else None


def status_of(session: Session, experiment_id: uuid.UUID) -> str | None:
    """The status alone (None: no such experiment), one primary-key read."""
    return session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))


def count_active(session: Session, owner: str) -> int:
    """The owner's queued, running and cancelling experiments (the quota counts these)."""
    return int(session.scalar(
        select(func.count()).select_from(Experiment)
        .where(Experiment.owner == owner, Experiment.status.in_(ACTIVE))
    ) or 0)


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
    owner: str | None = None,
    study_id: uuid.UUID | None = None,
) -> Page:
    """Newest first, keyset-paginated on (created_at, id). ``owner=None`` lists every owner's."""
    query = select(Experiment)
    if study_id is not None:
        query = query.where(Experiment.study_id == study_id)
    if owner is not None:
        query = query.where(Experiment.owner == owner)
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
    return Page([ExperimentRecord.of(row) for row in items],
                encode_cursor(items[-1]) if more and items else None)


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
    """Delete a finished experiment with its metrics and tags (explicitly, not by cascade)."""
    result = session.execute(
        delete(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status.in_(FINISHED))
        .returning(Experiment.id)
    )
    if result.first() is None:
        current = session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))
        session.rollback()
        raise InvalidTransitionError(current or "missing", "delete")
    metric_store(session).delete(session, [experiment_id])
    session.execute(delete(ExperimentTag).where(ExperimentTag.experiment_id == experiment_id))
    session.commit()
