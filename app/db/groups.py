"""Reads for fused group jobs: the members of a group message that are still queued."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import Experiment


def statuses(session: Session, experiment_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, str]:
    """Each existing experiment's status, one read for the whole group (a deleted one is
    absent)."""
    rows = session.execute(
        select(Experiment.id, Experiment.status).where(Experiment.id.in_(list(experiment_ids)))
    ).all()
    return {row.id: row.status for row in rows}
