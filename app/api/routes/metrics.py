"""Metric points of one experiment: keyset pages for pollers, and the list of names."""

from __future__ import annotations

import re
import uuid
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError

from app.api.deps import PrincipalDep, SessionDep, authorized_session
from app.api.etag import etag_body
from app.api.routes.experiments import NOT_FOUND, load
from app.api.schemas import METRIC_NAME_PATTERN, MetricNameOut, MetricPage, OptionalMetricNames
from app.db import metrics
from app.db.models import FINITE, MAX_STEP, NAN, NEG_INF, POS_INF

router = APIRouter(prefix="/experiments", tags=["metrics"])
_NAME = re.compile(METRIC_NAME_PATTERN)


def parse_names(names: str | None) -> list[str] | None:
    if not names:
        return None
    parts = [n.strip() for n in names.split(",") if n.strip()]
    bad = [n for n in parts if not _NAME.match(n)]
    if bad or len(parts) > 100:
        raise RequestValidationError([{
            "loc": ("query", "names"), "type": "value_error",
            "msg": f"invalid metric name(s): {', '.join(bad[:5])}" if bad
            else "at most 100 names",
        }])
    return parts


MAX_PAGE = 50_000  # points per page: a 20,000-step metric in one answer (1.8 MB of JSON)


@router.get("/{experiment_id}/metrics", response_model=MetricPage, responses=NOT_FOUND)
async def read_metrics(
    experiment_id: uuid.UUID,
    request: Request,
    names: OptionalMetricNames = None,
    after_step: Annotated[int, Query(
        ge=-1, le=MAX_STEP, description="Only points after this step: -1, then the previous "
                                        "page's `next_after_step`")] = -1,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many points; a "
                                                               "step is never split")] = 1000,
) -> Response:
    """Points with step > `after_step`, ordered by step then name; a page never splits a step.

    To follow a running experiment, poll with `after_step` = the last `next_after_step`:
    no point is ever missed or repeated.
    """
    # One thread hop for the whole request (session, auth, the experiment, the page and its
    # JSON), not one per dependency: pollers call this many times a second.
    return await run_in_threadpool(_read_metrics, request, experiment_id, names, after_step,
                                   limit)


def _read_metrics(request: Request, experiment_id: uuid.UUID, names: str | None,
                  after_step: int, limit: int) -> Response:
    with authorized_session(request) as (session, principal):
        load(session, experiment_id, principal)
        rows = metrics.read_rows(session, experiment_id, after_step=after_step,
                                 names=parse_names(names), limit=limit)
    return etag_body(request, page_json(rows))


_NONFINITE = {NAN: "NaN", POS_INF: "Infinity", NEG_INF: "-Infinity"}


def page_json(rows: list[metrics.Row]) -> bytes:
    """A ``MetricPage`` as JSON, straight from the stored tuples: building 10,000 pydantic
    objects per page cost more than the query. Non-finite values are the strings "NaN",
    "Infinity" and "-Infinity", as everywhere in the API."""
    items = [
        {"name": name, "step": step, "epoch": epoch,
         "value": value if kind == FINITE else _NONFINITE[kind], "wall_time": wall_time}
        for name, step, epoch, value, kind, wall_time in rows
    ]
    return orjson.dumps({"items": items, "next_after_step": rows[-1][1] if rows else None})


@router.get("/{experiment_id}/metrics/names", response_model=list[MetricNameOut],
            responses=NOT_FOUND)
def metric_names(experiment_id: uuid.UUID, session: SessionDep,
                 principal: PrincipalDep) -> list[MetricNameOut]:
    load(session, experiment_id, principal)
    return [MetricNameOut(name=n.name, count=n.count, last_step=n.last_step)
            for n in metrics.names(session, experiment_id)]
