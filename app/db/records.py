"""The plain records ``app.db`` hands to routes, the worker and the CLI: never ORM rows, so no
caller can lazy-load, hold a session open or write by accident.

An experiment's record fields are its stored columns of the same name. Both the general path
(``experiments.get`` and friends, through the ORM) and the polling fast path (``app.db.polling``,
one statement on a raw connection) build it here, from the one field list: adding a field to the
API means a column (``models``), a field below, and the response (``app.api.schemas``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from app.db.models import ApiKey, Experiment


def aware(stamp: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored one is UTC."""
    return stamp.replace(tzinfo=UTC) if stamp is not None and stamp.tzinfo is None else stamp


@dataclass(frozen=True)
class ExperimentRecord:
    id: uuid.UUID
    name: str
    owner: str
    status: str
    config: dict[str, Any]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None
    worker: str | None
    attempt: int
    dispatch_count: int
    error: str | None
    summary: dict[str, Any] | None
    study_id: uuid.UUID | None
    study_cell: int | None
    study_seed: int | None

    @classmethod
    def of(cls, row: Experiment) -> ExperimentRecord:
        return cls.from_values([getattr(row, name) for name in EXPERIMENT_FIELDS])

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> ExperimentRecord:
        """From the columns in ``EXPERIMENT_FIELDS`` order; ``config`` and ``summary`` may come
        as JSON text (the fast path reads them so, to compare them unparsed)."""
        record = dict(zip(EXPERIMENT_FIELDS, values, strict=True))
        for name in JSON_FIELDS:
            if isinstance(record[name], str):
                record[name] = json.loads(record[name])
        for name in STAMP_FIELDS:
            record[name] = aware(record[name])
        return cls(**record)


EXPERIMENT_FIELDS = tuple(f.name for f in fields(ExperimentRecord))
JSON_FIELDS = ("config", "summary")
STAMP_FIELDS = ("created_at", "started_at", "finished_at")


@dataclass(frozen=True)
class KeyRecord:
    """An API key as listed: never its hash."""

    key_id: str
    owner: str
    admin: bool
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> KeyRecord:
        return cls(row.key_id, row.owner, row.admin, row.created_at, row.revoked_at)
