"""Tables. Metric values are split into (value, kind) so NaN/±inf survive SQLite, which turns a
stored NaN into NULL: ``kind`` says what the point is and ``value`` is NULL unless finite, so
SQL aggregates (min, max, avg) see only finite values on every backend."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Experiment(Base):
    __tablename__ = "experiments"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(64), default="local")
    status: Mapped[str] = mapped_column(String(16), index=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    device: Mapped[str | None] = mapped_column(String(32))
    worker: Mapped[str | None] = mapped_column(String(255))
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    # Times sent to the broker: 1 after submit, +1 per re-send by the reconciler (issue 11).
    dispatch_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    error: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Unused and always False: whether a checkpoint exists is the file itself
    # (Settings.checkpoint_path). Kept only because dropping a column takes a migration.
    has_checkpoint: Mapped[bool] = mapped_column(default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # A study's member (migration 0007): the study, the member's cell in its grid, its seed.
    study_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    study_cell: Mapped[int | None] = mapped_column(Integer)
    study_seed: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_experiments_created", "created_at", "id"),
        Index("ix_experiments_owner_status", "owner", "status"),
        Index("ix_experiments_study", "study_id", "study_cell", "study_seed"),
    )


class Study(Base):
    """A seed-paired factorial grid of experiments (app.studies). Its status is its members'."""

    __tablename__ = "studies"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(100))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    n_members: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    # The results document of a terminal study, and the members' fingerprint it was made from.
    results_key: Mapped[str | None] = mapped_column(String(64))
    results: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_studies_created", "created_at", "id"),)


class ExperimentTag(Base):
    __tablename__ = "experiment_tags"

    experiment_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)

    __table_args__ = (Index("ix_experiment_tags_tag", "tag"),)


# kind values of MetricPoint
FINITE, NAN, POS_INF, NEG_INF = 0, 1, 2, 3
# The largest step a request may name (a query bound, a Last-Event-ID): well below bigint's
# maximum, so a bound a client sends always fits the step column, with room to compute on it.
MAX_STEP = 2**62


class MetricPoint(Base):
    __tablename__ = "metric_points"

    # Keyed by (experiment, name, step): a retried write of the same point is harmless.
    # No foreign key (migration 0004): checked per row, it cost more than storing the point.
    # Writers lock the experiment's row and check their lease first (app.db.metrics), and
    # delete_finished deletes the points with their experiment.
    experiment_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    kind: Mapped[int] = mapped_column(SmallInteger, default=FINITE)
    wall_time: Mapped[float] = mapped_column(Float)

    # "This experiment's points after step S" without a scan (the polling query).
    # Postgres: without B-tree deduplication (every step repeats the key once per metric).
    __table_args__ = (Index("ix_metric_points_exp_step", "experiment_id", "step",
                            postgresql_with={"deduplicate_items": "off"}),)


class MetricRollup(Base):
    """A block of ``block_size`` aligned steps of one metric, summarized
    (``app.db.metric_store.postgres_rollups``): long series are bucketed from these. Kept by
    the Postgres write path; unused on SQLite."""

    __tablename__ = "metric_rollups"

    experiment_id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    block_size: Mapped[int] = mapped_column(Integer, primary_key=True)
    block: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    step_start: Mapped[int] = mapped_column(BigInteger)
    step_end: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(BigInteger)
    finite: Mapped[int] = mapped_column(BigInteger)
    vmin: Mapped[float | None] = mapped_column(Float)
    vmax: Mapped[float | None] = mapped_column(Float)
    vsum: Mapped[float | None] = mapped_column(Float)
    first_step: Mapped[int | None] = mapped_column(BigInteger)
    first: Mapped[float | None] = mapped_column(Float)
    last_step: Mapped[int | None] = mapped_column(BigInteger)
    last: Mapped[float | None] = mapped_column(Float)


class ApiKey(Base):
    """An API key. Only a SHA-256 of the key is stored; ``key_id`` (public) finds the row."""

    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    key_hash: Mapped[str] = mapped_column(String(64))
    admin: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
