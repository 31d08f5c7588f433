"""Metric points of one experiment: keyset pages for pollers, and the list of names."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from app.api.deps import NOT_FOUND, ExperimentAccess, ExperimentDep
from app.api.etag import etag_body
from app.api.params import check_names, known_names, parse_names
from app.api.schemas import MetricNameOut, MetricPage, OptionalMetricNames
from app.db import metrics
from app.db.models import FINITE, MAX_STEP, NAN, NEG_INF, POS_INF

router = APIRouter(prefix="/experiments", tags=["metrics"])


MAX_PAGE = 50_000  # points per page: a 20,000-step metric in one answer (1.8 MB of JSON)


@router.get("/{experiment_id}/metrics", response_model=MetricPage, responses=NOT_FOUND)
async def read_metrics(
    access: ExperimentDep,
    request: Request,
    names: OptionalMetricNames = None,
    after_step: Annotated[int, Query(
        ge=-1, le=MAX_STEP, description="Only points after this step: -1, then the previous "
                                        "page's `next_after_step`")] = -1,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="At most this many points; a "
                                                               "step is never split")] = 1000,
) -> Response:
    """Points with step > `after_step`, ordered by step then name; a page never splits a step.

    To follow a running experiment, send `next_after_step` back as `after_step`, at once while
    `has_more` is true, else after a pause: no point is ever missed or repeated. When nothing
    is new, `next_after_step` is the `after_step` sent. Unknown `names` are a 422 that lists
    the names this experiment's config records.
    """
    # One thread hop for the whole request (session, auth, the experiment, the page and its
    # JSON), not one per dependency: pollers call this many times a second.
    return await run_in_threadpool(_read_metrics, request, access, names, after_step, limit)


def _read_metrics(request: Request, access: ExperimentAccess, names: str | None,
                  after_step: int, limit: int) -> Response:
    with access.open() as (session, experiment):
        wanted = parse_names(names)
        if wanted is not None:
            check_names(wanted, known_names(experiment))
        page = metrics.read_row_page(session, access.id, after_step=after_step,
                                     names=wanted, limit=limit)
    return etag_body(request, page_json(page.rows, after_step, page.has_more))


_NONFINITE = {NAN: "NaN", POS_INF: "Infinity", NEG_INF: "-Infinity"}


def page_json(rows: list[metrics.Row], after_step: int = -1, has_more: bool = False) -> bytes:
    """A ``MetricPage`` as JSON, straight from the stored tuples: building 10,000 pydantic
    objects per page cost more than the query. Non-finite values are the strings "NaN",
    "Infinity" and "-Infinity", as everywhere in the API. The cursor is the page's last step,
    or ``after_step`` itself when the page is empty: always a value to send back."""
    items = [
        {"name": name, "step": step, "epoch": epoch,
         "value": value if kind == FINITE else _NONFINITE[kind], "wall_time": wall_time}
        for name, step, epoch, value, kind, wall_time in rows
    ]
    return orjson.dumps({"items": items, "next_after_step": rows[-1][1] if rows else after_step,
                         "has_more": has_more})


@router.get("/{experiment_id}/metrics/names", response_model=list[MetricNameOut],
            responses=NOT_FOUND)
def metric_names(access: ExperimentDep) -> list[MetricNameOut]:
    with access.open() as (session, _):
        return [MetricNameOut(name=n.name, count=n.count, last_step=n.last_step)
                for n in metrics.names(session, access.id)]
