"""Response and request shapes of API v1. The experiment config itself is the engine's model."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field

from app.db.records import ExperimentRecord
from worker.training.config import ExperimentConfig
from worker.training.presets import PRESETS
from worker.training.result import JsonFloat, TrainSummary

Status = Literal["queued", "running", "cancelling", "succeeded", "diverged", "failed", "cancelled"]
TAG_PATTERN = r"^[A-Za-z0-9_.:=+-]+$"
# A metric name in a query or a path (the engine's names, e.g. "bn/hidden1/running_var_mean").
METRIC_NAME = r"[A-Za-z0-9_./:-]{1,128}"
METRIC_NAME_PATTERN = rf"^{METRIC_NAME}$"
MAX_METRIC_NAMES = 100
# ``names=loss,grad_norm``: 1 to 100 names, spaces allowed around the commas. The query
# parameters declare it, so the server enforces exactly what the schema publishes.
METRIC_NAMES_PATTERN = (
    rf"^ *{METRIC_NAME} *(?:, *{METRIC_NAME} *){{0,{MAX_METRIC_NAMES - 1}}}$"
)
_NAMES_HELP = (f"Comma-separated metric names (1 to {MAX_METRIC_NAMES}), as listed by "
               "`GET /experiments/{id}/metrics/names`. A name that the experiment's config does "
               "not produce is answered with 422, listing the names it does (a rule that depends "
               "on the stored config)")
MetricNames = Annotated[str, Query(max_length=4000, pattern=METRIC_NAMES_PATTERN,
                                   description=_NAMES_HELP, examples=["test_accuracy,grad_norm"])]
OptionalMetricNames = Annotated[str | None, Query(
    max_length=4000, pattern=METRIC_NAMES_PATTERN, examples=["loss,grad_norm"],
    description=f"{_NAMES_HELP}; every name when absent",
)]
# Page cursors are URL-safe base64 without padding (``app.db.experiments.encode_cursor``).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"
Cursor = Annotated[str | None, Query(
    max_length=200, pattern=CURSOR_PATTERN,
    description="Opaque: the `next_cursor` of the previous page, passed back unchanged. A value "
                "this service did not issue is refused with 422.",
)]
Tag = Annotated[str, Field(min_length=1, max_length=64, pattern=TAG_PATTERN)]


class SubmitOptions(BaseModel):
    """The fields a submission adds to the config: a preset applied underneath it, and tags."""

    model_config = ConfigDict(extra="ignore")

    preset: str | None = None
    tags: list[Tag] = Field(default_factory=list, max_length=32)


class StudyMembership(BaseModel):
    """The study an experiment belongs to (GET /studies/{id}), its cell and its seed."""

    id: uuid.UUID
    cell: int
    seed: int


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
    dispatch_count: int = Field(description="Messages sent to the broker for it: 1, plus one "
                                            "per re-send (docs/reliability.md)")
    error: str | None
    summary: TrainSummary | None
    study: StudyMembership | None = None

    @classmethod
    def of(cls, record: ExperimentRecord, tags: list[str]) -> ExperimentOut:
        """The answer for a record (both the general and the polling fast path build it so)."""
        return cls(
            id=record.id, name=record.name, tags=tags, status=record.status,
            config=ExperimentConfig.model_validate(record.config),
            created_at=record.created_at, started_at=record.started_at,
            finished_at=record.finished_at, device=record.device, worker=record.worker,
            attempt=record.attempt, dispatch_count=record.dispatch_count, error=record.error,
            summary=TrainSummary.model_validate(record.summary) if record.summary else None,
            study=None if record.study_id is None else StudyMembership(
                id=record.study_id, cell=record.study_cell or 0, seed=record.study_seed or 0),
        )


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
    next_after_step: int = Field(
        description="Send back unchanged as after_step: the page's last step, or the after_step "
        "sent when nothing new was found"
    )
    has_more: bool = Field(
        description="More points are stored past this page: ask again at once (else wait)"
    )


class MetricNameOut(BaseModel):
    name: str
    count: int
    last_step: int


class PresetOut(BaseModel):
    name: str
    description: str
    dataset: str
    needs_download: bool = Field(
        description="The dataset is downloaded on first use (then kept under NORMLAB_DATA_DIR)"
    )
    offline_dataset: str | None = Field(
        description='A bundled dataset to use without internet: {"dataset": {"name": …}}'
    )
    config: ExperimentConfig


class Problem(BaseModel):
    detail: str | list[dict[str, Any]]


def submit_schema() -> dict[str, Any]:
    """OpenAPI schema of the POST /experiments body: the config plus ``preset`` and ``tags``."""
    schema = ExperimentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    schema["title"] = "ExperimentSubmission"
    schema["description"] = (
        "An experiment config; unset fields take defaults. Rules across fields are refused with "
        "422 naming the field: `training.batch_size` must be at least 2 when "
        "`model.batch_norm.enabled` (with the preset applied underneath).")
    schema["properties"]["preset"] = {
        "anyOf": [{"type": "string", "enum": sorted(PRESETS)}, {"type": "null"}],
        "description": "A named preset applied underneath the given fields (GET /presets)",
    }
    schema["properties"]["tags"] = {
        "type": "array", "maxItems": 32,
        "items": {"type": "string", "minLength": 1, "maxLength": 64,
                  "pattern": TAG_PATTERN},
    }
    return schema


def config_component_schemas() -> dict[str, Any]:
    defs = ExperimentConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    return dict(defs.get("$defs", {}))


class BucketOut(BaseModel):
    bucket: int = Field(description="Index on the bucket grid (aligned across a comparison)")
    step_start: int
    step_end: int
    first: JsonFloat | None = Field(description="First finite value in the bucket")
    last: JsonFloat | None = Field(description="Last finite value in the bucket")
    min: JsonFloat | None
    max: JsonFloat | None
    mean: JsonFloat | None = Field(description="Mean of the finite values")
    count: int
    nonfinite_count: int = Field(description="Points that were NaN or ±Infinity")


class SeriesOut(BaseModel):
    name: str
    points: int
    raw: bool = Field(description="True when every bucket is a single point")
    from_step: int | None
    to_step: int | None
    buckets: list[BucketOut]


class CompareAxis(BaseModel):
    from_step: int
    to_step: int
    points: int


class ComparedExperiment(BaseModel):
    id: uuid.UUID
    name: str
    status: Status
    summary: TrainSummary | None = Field(description="The run's summary; null until it finishes")
    summary_diff: dict[str, int | JsonFloat | None] = Field(
        description="This summary minus the first experiment's, per numeric field (null where "
        "either lacks a value); empty until both have a summary"
    )
    config_diff: dict[str, Any] = Field(
        description="Config fields that differ from the first experiment (`name` aside)"
    )
    series: dict[str, list[BucketOut]]


class CompareOut(BaseModel):
    axis: CompareAxis
    experiments: list[ComparedExperiment]
