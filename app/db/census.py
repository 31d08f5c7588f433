"""What an operator counts, read from the database at each scrape: experiments by status and
device, the oldest queued one, and the workers' heartbeats."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db.experiments import ACTIVE
from app.db.models import Experiment


@dataclass(frozen=True)
class Census:
    by_status_device: dict[tuple[str, str], int]  # (status, config's resources.device) → count
    oldest_queued_at: datetime | None
    heartbeats: dict[str, datetime]  # worker → its newest heartbeat, over running experiments


def _aware(stamp: datetime) -> datetime:
    return stamp if stamp.tzinfo is not None else stamp.replace(tzinfo=UTC)  # SQLite drops it


def take(session: Session) -> Census:
    device = Experiment.config["resources"]["device"].as_string()
    counts = session.execute(
        select(Experiment.status, device, func.count()).group_by(Experiment.status, device)
    )
    oldest = session.scalar(
        select(func.min(Experiment.created_at)).where(Experiment.status == "queued")
    )
    beats = session.execute(
        select(Experiment.worker, func.max(Experiment.heartbeat_at))
        .where(Experiment.status.in_(ACTIVE), Experiment.worker.is_not(None),
               Experiment.heartbeat_at.is_not(None))
        .group_by(Experiment.worker)
    )
    return Census(
        by_status_device={(status, dev or "auto"): int(n) for status, dev, n in counts},
        oldest_queued_at=_aware(oldest) if oldest is not None else None,
        heartbeats={worker: _aware(stamp) for worker, stamp in beats
                    if worker is not None and stamp is not None},
    )
