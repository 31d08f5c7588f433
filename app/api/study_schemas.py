"""Response shapes of the study routes. The spec itself is ``app.studies.spec.StudySpec``."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, Field

from app.studies.spec import StudySpec


class StudyProgress(BaseModel):
    total: int = Field(description="Members")
    by_status: dict[str, int] = Field(description="Member counts by status")
    finished: int = Field(description="Members in a terminal status")
    terminal: bool = Field(description="True when every member is terminal")


class StudyOut(BaseModel):
    id: uuid.UUID
    name: str
    owner: str
    created_at: datetime
    n_members: int
    spec: StudySpec
    progress: StudyProgress


class StudyPage(BaseModel):
    items: list[StudyOut]
    next_cursor: str | None


class StudyCancelled(BaseModel):
    id: uuid.UUID
    cancelled: int = Field(description="Queued members cancelled at once")
    cancelling: int = Field(description="Running members told to stop")
