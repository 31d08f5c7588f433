"""Response and request shapes of API v1. The experiment config itself is the engine's model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.training.config import ExperimentConfig
from worker.training.result import JsonFloat, TrainSummary

Status = Literal["queued", "running", "cancelling", "succeeded", "diverged", "failed", "cancelled"]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:=+-]+$")]
MetricName = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_./:-]+$")]


class SubmitOptions(BaseModel):
    """The fields a submission adds to the config: a preset applied underneath it, and tags."""

    model_config = ConfigDict(extra="ignore")

    preset: str | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class ExperimentOut(BaseModel):
    id: uuid.UUID
    name: str
    tags: list[str]
    status: Status
    config: ExperimentConfig
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None
    worker: str | None
    attempt: int
    error: str | None
    summary: TrainSummary | None


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None


class MetricPointOut(BaseModel):
    name: str
    step: int
    epoch: int
    value: JsonFloat = Field(description='A number, or "NaN", "Infinity", "-Infinity"')
    wall_time: float


class MetricPage(BaseModel):
    items: list[MetricPointOut]
    next_after_step: int | None = Field(
        description="Pass as after_step to continue; null when nothing new was found"
    )


class MetricNameOut(BaseModel):
    name: str
    count: int
    last_step: int


class PresetOut(BaseModel):
    name: str
    description: str
    config: ExperimentConfig


class Problem(BaseModel):
    detail: str | list[dict[str, Any]]


def submit_schema() -> dict[str, Any]:
    """OpenAPI schema of the POST /experiments body: the config plus ``preset`` and ``tags``."""
    schema = ExperimentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["title"] = "ExperimentSubmission"
    schema["properties"]["preset"] = {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "A named preset applied underneath the given fields (GET /presets)",
    }
    schema["properties"]["tags"] = {
        "type": "array", "maxItems": 32,
        "items": {"type": "string", "minLength": 1, "maxLength": 64,
                  "pattern": r"^[A-Za-z0-9_.:=+-]+$"},
    }
    return schema


def config_component_schemas() -> dict[str, Any]:
    defs = ExperimentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    return dict(defs.get("$defs", {}))
