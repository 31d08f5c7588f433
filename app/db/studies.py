"""Study rows and their members: creation in one transaction, listing, progress, the results
cache, cancel and delete. Hands out plain records."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.experiments import ACTIVE, FINISHED, IdempotencyConflictError, decode_cursor, now
from app.db.models import FINITE, Experiment, ExperimentTag, MetricPoint, Study
from app.db.session import metric_store


class StudyActiveError(Exception):
    """The study still has queued or running members."""


@dataclass(frozen=True)
class StudyRecord:
    id: uuid.UUID
    name: str
    owner: str
    spec: dict[str, Any]
    n_members: int
    created_at: datetime


@dataclass(frozen=True)
class MemberRecord:
    id: uuid.UUID
    cell: int
    seed: int
    status: str
    summary: dict[str, Any] | None


@dataclass(frozen=True)
class NewMember:
    cell: int
    seed: int
    config: dict[str, Any]  # a validated experiment config, as JSON


@dataclass(frozen=True)
class StudyPage:
    items: list[StudyRecord]
    next_cursor: str | None


def _record(row: Study) -> StudyRecord:
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return StudyRecord(row.id, row.name, row.owner, row.spec, row.n_members, created)


def create(
    session: Session, *, name: str, spec: dict[str, Any], members: Sequence[NewMember],
    owner: str, idempotency_key: str | None = None, request_hash: str | None = None,
) -> tuple[StudyRecord, list[uuid.UUID], bool]:
    """Insert the study and every member (queued) in one transaction and commit: all or nothing.
    Returns (study, member ids in grid order, created). Idempotency keys are scoped per owner."""
    if idempotency_key is not None:
        idempotency_key = f"{owner}:{idempotency_key}"
        previous = _by_key(session, idempotency_key)
        if previous is not None:
            return _same(session, previous, request_hash)
    stamp = now()
    study = Study(id=uuid.uuid4(), name=name, owner=owner, spec=spec, n_members=len(members),
                  created_at=stamp, idempotency_key=idempotency_key, request_hash=request_hash)
    session.add(study)
    session.flush()
    ids = [uuid.uuid4() for _ in members]
    if members:
        # One multi-row INSERT (batched by SQLAlchemy's insertmanyvalues), not one per member.
        session.execute(insert(Experiment), [
            {"id": ident, "name": m.config["name"], "owner": owner, "status": "queued",
             "config": m.config, "created_at": stamp, "updated_at": stamp, "attempt": 0,
             "study_id": study.id, "dispatch_count": 1,  # sent after this commit
             "study_cell": m.cell, "study_seed": m.seed}
            for ident, m in zip(ids, members, strict=True)
        ])
    try:
        session.commit()
    except IntegrityError:
        session.rollback()  # two requests with one new Idempotency-Key: the other one won
        previous = _by_key(session, idempotency_key or "")
        if previous is None:
            raise
        return _same(session, previous, request_hash)
    return _record(study), ids, True


def replay(session: Session, *, owner: str, idempotency_key: str | None,
           request_hash: str | None) -> StudyRecord | None:
    """The study an earlier request with this Idempotency-Key created (so a retry is answered
    before quotas count that study's own members), or None. Raises IdempotencyConflictError
    when the key came with another body."""
    if idempotency_key is None:
        return None
    previous = _by_key(session, f"{owner}:{idempotency_key}")
    return None if previous is None else _same(session, previous, request_hash)[0]


def _by_key(session: Session, key: str) -> Study | None:
    return session.scalars(select(Study).where(Study.idempotency_key == key)).first()


def _same(session: Session, previous: Study, request_hash: str | None
          ) -> tuple[StudyRecord, list[uuid.UUID], bool]:
    if previous.request_hash != request_hash:
        raise IdempotencyConflictError(
            "this Idempotency-Key was already used with a different request body")
    return _record(previous), [m.id for m in members(session, previous.id)], False


def get(session: Session, study_id: uuid.UUID) -> StudyRecord | None:
    row = session.get(Study, study_id)
    return _record(row) if row is not None else None


def _encode_cursor(record: StudyRecord) -> str:
    raw = f"{record.created_at.isoformat()}|{record.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def list_page(session: Session, *, limit: int, cursor: str | None = None,
              owner: str | None = None) -> StudyPage:
    """Newest first, keyset-paginated on (created_at, id); ``owner=None``: every owner's.
    Raises ValueError for a cursor this service did not issue."""
    query = select(Study)
    if owner is not None:
        query = query.where(Study.owner == owner)
    if cursor is not None:
        created, ident = decode_cursor(cursor)
        query = query.where((Study.created_at < created)
                            | ((Study.created_at == created) & (Study.id < ident)))
    rows = [_record(r) for r in session.scalars(
        query.order_by(Study.created_at.desc(), Study.id.desc()).limit(limit + 1))]
    items = rows[:limit]
    return StudyPage(items, _encode_cursor(items[-1]) if len(rows) > limit and items else None)


def members(session: Session, study_id: uuid.UUID) -> list[MemberRecord]:
    """The study's members in grid order (cell, then seed)."""
    rows = session.execute(
        select(Experiment.id, Experiment.study_cell, Experiment.study_seed, Experiment.status,
               Experiment.summary)
        .where(Experiment.study_id == study_id)
        .order_by(Experiment.study_cell, Experiment.study_seed)
    )
    return [MemberRecord(i, int(c or 0), int(s or 0), st, summary)
            for i, c, s, st, summary in rows]


def progress(session: Session, study_id: uuid.UUID) -> dict[str, int]:
    """Member counts by status (statuses with no member are absent)."""
    rows = session.execute(
        select(Experiment.status, func.count()).where(Experiment.study_id == study_id)
        .group_by(Experiment.status).order_by(Experiment.status)
    )
    return {status: int(count) for status, count in rows}


def progress_many(session: Session, study_ids: Sequence[uuid.UUID]
                  ) -> dict[uuid.UUID, dict[str, int]]:
    """``progress`` of several studies in one query."""
    out: dict[uuid.UUID, dict[str, int]] = {i: {} for i in study_ids}
    if study_ids:
        rows = session.execute(
            select(Experiment.study_id, Experiment.status, func.count())
            .where(Experiment.study_id.in_(list(study_ids)))
            .group_by(Experiment.study_id, Experiment.status)
            .order_by(Experiment.study_id, Experiment.status)
        )
        for study_id, status, count in rows:
            if study_id is not None:
                out[study_id][status] = int(count)
    return out


def fingerprint(session: Session, study_id: uuid.UUID) -> str:
    """Changes whenever a member changes status or is deleted (every transition moves a count
    between statuses; the latest update time covers the rest): keys the results cache."""
    rows = session.execute(
        select(Experiment.status, func.count(), func.max(Experiment.updated_at))
        .where(Experiment.study_id == study_id)
        .group_by(Experiment.status).order_by(Experiment.status)
    )
    raw = ";".join(f"{status}={count}@{last.isoformat() if last else ''}"
                   for status, count, last in rows)
    return hashlib.sha256(raw.encode()).hexdigest()


def cached_results(session: Session, study_id: uuid.UUID, key: str) -> str | None:
    found = session.execute(select(Study.results_key, Study.results).where(Study.id == study_id)
                            ).first()
    return found[1] if found is not None and found[0] == key else None


def store_results(session: Session, study_id: uuid.UUID, key: str, body: str) -> None:
    session.execute(update(Study).where(Study.id == study_id)
                    .values(results_key=key, results=body))
    session.commit()


def first_reaching(session: Session, ids: Sequence[uuid.UUID], name: str, threshold: float,
                   upward: bool) -> dict[uuid.UUID, int]:
    """Per experiment, the first step at which metric ``name`` reached ``threshold`` (≥ when
    ``upward``, else ≤); experiments that never did are absent."""
    if not ids:
        return {}
    reached = MetricPoint.value >= threshold if upward else MetricPoint.value <= threshold
    rows = session.execute(
        select(MetricPoint.experiment_id, func.min(MetricPoint.step))
        .where(MetricPoint.experiment_id.in_(list(ids)), MetricPoint.name == name,
               MetricPoint.kind == FINITE, reached)
        .group_by(MetricPoint.experiment_id)
    )
    return {ident: int(step) for ident, step in rows}


def cancel(session: Session, study_id: uuid.UUID) -> dict[str, int]:
    """Every non-terminal member: queued → cancelled at once, running → cancelling. Commits."""
    stamp = now()
    done = {}
    for source, target in (("queued", "cancelled"), ("running", "cancelling")):
        values: dict[str, Any] = {"status": target, "updated_at": stamp}
        if target == "cancelled":
            values["finished_at"] = stamp
        result = session.execute(update(Experiment).where(
            Experiment.study_id == study_id, Experiment.status == source).values(**values))
        done[target] = int(result.rowcount)  # type: ignore[attr-defined]
    session.commit()
    return done


def delete_finished(session: Session, study_id: uuid.UUID) -> list[uuid.UUID]:
    """Delete a terminal study with its members, their metrics and tags; returns the member ids
    (for their checkpoints). Raises InvalidTransitionError while any member is active."""
    active = session.scalar(select(func.count()).where(
        Experiment.study_id == study_id, Experiment.status.in_(ACTIVE)))
    if active:
        raise StudyActiveError(f"cannot delete a study with {active} members not finished; "
                               "cancel it first")
    ids = list(session.scalars(select(Experiment.id).where(
        Experiment.study_id == study_id, Experiment.status.in_(FINISHED))))
    for chunk in range(0, len(ids), 500):
        part = ids[chunk:chunk + 500]
        metric_store(session).delete(session, part)
        session.execute(delete(ExperimentTag).where(ExperimentTag.experiment_id.in_(part)))
        session.execute(delete(Experiment).where(Experiment.id.in_(part)))
    session.execute(delete(Study).where(Study.id == study_id))
    session.commit()
    return ids
