"""Downsampled series for charts, and aligned comparisons of several experiments."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from app.api.deps import NOT_FOUND, CallerDep, ExperimentAccess, ExperimentDep, visible_experiment
from app.api.etag import etag_body, etag_json
from app.api.params import (
    MetricPath,
    check_names,
    known_names,
    parse_names,
    unknown_names_message,
)
from app.api.schemas import (
    BucketOut,
    CompareAxis,
    ComparedExperiment,
    CompareOut,
    MetricNames,
    SeriesOut,
)
from app.db import series
from app.db.bucketing import Bucket
from app.db.keys import Principal
from app.db.models import MAX_STEP
from app.db.records import ExperimentRecord
from worker.training.result import TrainSummary

router = APIRouter(tags=["metrics"])
Points = Annotated[int, Query(ge=1, le=5000, description="At most this many buckets")]
FromStep = Annotated[int | None, Query(
    ge=0, le=MAX_STEP, description="First step of the range; must not exceed `to_step` (refused "
                                   "with 422 otherwise). The first logged step when absent.")]
ToStep = Annotated[int | None, Query(
    ge=0, le=MAX_STEP, description="Last step of the range, at least `from_step` (refused with "
                                   "422 otherwise). The last logged step when absent.")]
MAX_COMPARED = 20
# A UUID, then up to 19 more after commas: the list the server parses in ``_parse_ids``.
_UUID = r"[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}"
IDS_PATTERN = rf"^ *{_UUID} *(?:, *{_UUID} *){{0,{MAX_COMPARED - 1}}}$"


def _out(b: Bucket) -> BucketOut:
    return BucketOut(bucket=b.bucket, step_start=b.step_start, step_end=b.step_end, first=b.first,
                     last=b.last, min=b.min, max=b.max, mean=b.mean, count=b.count,
                     nonfinite_count=b.nonfinite_count)


@router.get("/experiments/{experiment_id}/metrics/{name:path}/series", response_model=SeriesOut,
            responses=NOT_FOUND)
async def get_series(
    # ``experiment_id`` is ``access``'s; named here too so the OpenAPI lists the path's two
    # parameters in path order (a dependency's parameters would come after ``name``).
    experiment_id: uuid.UUID, name: MetricPath, access: ExperimentDep, request: Request,
    points: Points = 500, from_step: FromStep = None, to_step: ToStep = None,
) -> Response:
    """At most `points` buckets over the step range, each with first/last/min/max/mean/count and
    `nonfinite_count`. Deterministic; a spike always survives as a bucket's `max`. When the range
    holds no more than `points` points, each point is its own bucket (`raw: true`). A name this
    experiment's config does not record is a 404 that lists the names it does."""
    # One thread hop for the whole request, as for metric pages: dashboards poll this too.
    return await run_in_threadpool(_series, request, access, name, points, from_step, to_step)


def _series(request: Request, access: ExperimentAccess, name: str, points: int,
            from_step: int | None, to_step: int | None) -> Response:
    experiment_id = access.id
    with access.caller.session() as (session, principal):
        if from_step is not None and to_step is not None and from_step > to_step:
            raise RequestValidationError([{"loc": ("query", "from_step"), "type": "value_error",
                                           "msg": "from_step must not exceed to_step"}])
        known = known_names(visible_experiment(session, experiment_id, principal))
        if name not in known:
            raise HTTPException(404, unknown_names_message([name], known))
        found = series.step_range(session, experiment_id, name, from_step, to_step,
                                  count_cap=points + 1)
        buckets = series.series(session, experiment_id, name, points=points,
                                from_step=from_step, to_step=to_step, found=found)
    # A SeriesOut, encoded straight from the dataclasses (orjson knows them): 5,000 pydantic
    # buckets per answer cost more than computing them. Bucket values are finite or None.
    body = orjson.dumps({
        "name": name, "points": points, "raw": found is not None and found.count <= points,
        "from_step": found.lo if found else from_step, "to_step": found.hi if found else to_step,
        "buckets": buckets,
    })
    return etag_body(request, body)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def config_diff(base: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    """The dotted fields of ``other`` that differ from ``base`` (with ``other``'s values); not
    ``name``, a label rather than a difference."""
    a, b = flatten(base), flatten(other)
    return {k: b.get(k) for k in sorted(a.keys() | b.keys())
            if k != "name" and a.get(k) != b.get(k)}


def summary_diff(base: TrainSummary | None, other: TrainSummary | None) -> dict[str, Any]:
    """``other`` − ``base`` for each numeric summary field that either run has (None where one
    of them lacks it); empty until both runs have a summary."""
    if base is None or other is None:
        return {}
    diff: dict[str, Any] = {}
    for field, value in other:
        first = getattr(base, field)
        if _is_number(value) or _is_number(first):
            diff[field] = value - first if _is_number(value) and _is_number(first) else None
    return diff


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _parse_ids(ids: str) -> list[uuid.UUID]:
    parts = [p.strip() for p in ids.split(",")]
    if any(not p for p in parts):
        raise RequestValidationError([{
            "loc": ("query", "ids"), "type": "value_error",
            "msg": "ids has an empty entry (a stray comma?): give comma-separated experiment ids",
        }])
    try:
        parsed = [uuid.UUID(p) for p in parts]
    except ValueError as exc:
        msg = "ids must be comma-separated experiment UUIDs"
        raise RequestValidationError(
            [{"loc": ("query", "ids"), "type": "uuid_parsing", "msg": msg}]
        ) from exc
    repeated = sorted({str(i) for i in parsed if parsed.count(i) > 1})
    if repeated:
        raise RequestValidationError([{"loc": ("query", "ids"), "type": "value_error",
                                       "msg": f"ids repeats {', '.join(repeated)}: each "
                                              "experiment is compared once"}])
    if not 1 <= len(parsed) <= MAX_COMPARED:
        raise RequestValidationError([{"loc": ("query", "ids"), "type": "value_error",
                                       "msg": f"compare 1 to {MAX_COMPARED} experiments"}])
    return parsed


def _summary(experiment: ExperimentRecord) -> TrainSummary | None:
    return TrainSummary.model_validate(experiment.summary) if experiment.summary else None


@router.get("/compare", response_model=CompareOut, responses=NOT_FOUND)
def compare(
    request: Request, caller: CallerDep,
    ids: Annotated[str, Query(
        max_length=800, pattern=IDS_PATTERN,
        description=f"Comma-separated experiment ids (1 to {MAX_COMPARED}), e.g. the `id` "
                    "answered by `POST /experiments`; an unknown one is answered with 404, a "
                    "repeated one with 422 (each experiment is compared once)")],
    names: MetricNames = "loss",
    points: Points = 500,
) -> Response:
    """Bucketed series of several experiments over one shared step axis (same bucket grid); for
    each experiment its summary (null until it finishes), and against the first one the config
    fields that differ and the difference of each numeric summary field. A name that none of
    the experiments' configs records is a 422."""
    with caller.session() as (session, principal):
        return _compare(request, session, principal, ids, names, points)


def _compare(request: Request, session: Session, principal: Principal, ids: str, names: str,
             points: int) -> Response:
    experiment_ids = _parse_ids(ids)
    metric_names = parse_names(names) or ["loss"]
    rows = [visible_experiment(session, experiment_id, principal)
            for experiment_id in experiment_ids]
    check_names(metric_names, frozenset().union(*(known_names(r) for r in rows)))
    ranges = [series.step_range(session, r.id, n, count_cap=1) for r in rows for n in metric_names]
    present = [r for r in ranges if r is not None]
    lo = min((r.lo for r in present), default=0)
    hi = max((r.hi for r in present), default=0)
    summaries = [_summary(row) for row in rows]
    compared = [
        ComparedExperiment(
            id=row.id, name=row.name, status=row.status, summary=summary,
            summary_diff=summary_diff(summaries[0], summary),
            config_diff=config_diff(rows[0].config, row.config),
            series={n: [_out(b) for b in series.series(session, row.id, n, points=points,
                                                       raw_if_small=False, lo=lo, hi=hi)]
                    for n in metric_names},
        )
        for row, summary in zip(rows, summaries, strict=True)
    ]
    return etag_json(request, CompareOut(axis=CompareAxis(from_step=lo, to_step=hi, points=points),
                                         experiments=compared))
