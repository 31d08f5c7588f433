"""Metric points of one experiment: keyset pages for pollers, and the list of names."""

from __future__ import annotations

import difflib
import re
import uuid
from collections import OrderedDict
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
from app.db.models import FINITE, MAX_STEP, NAN, NEG_INF, POS_INF, Experiment
from worker.training.config import ExperimentConfig
from worker.training.metricnames import produced_names

router = APIRouter(prefix="/experiments", tags=["metrics"])
_NAME = re.compile(METRIC_NAME_PATTERN)


def parse_names(names: str | None) -> list[str] | None:
    """The comma-separated ``names`` parameter; None when it was not sent. Sent but empty is a
    422: answering every metric (or none) would hide the client's mistake."""
    if names is None:
        return None
    parts = list(dict.fromkeys(n.strip() for n in names.split(",") if n.strip()))
    bad = [n for n in parts if not _NAME.match(n)]
    if bad or not parts or len(parts) > 100:
        raise RequestValidationError([{
            "loc": ("query", "names"), "type": "value_error",
            "msg": f"invalid metric name(s): {', '.join(bad[:5])}" if bad
            else "at most 100 names" if parts
            else "names is empty: give metric names, or leave the parameter out",
        }])
    return parts


# Configs never change once submitted: the names each one produces are computed once.
_KNOWN: OrderedDict[uuid.UUID, frozenset[str]] = OrderedDict()
_KNOWN_CACHE_SIZE = 4096


def known_names(row: Experiment) -> frozenset[str]:
    """The metric names this experiment's config makes the engine record (written or not)."""
    found = _KNOWN.get(row.id)
    if found is None:
        found = frozenset(produced_names(ExperimentConfig.model_validate(row.config)))
        _KNOWN[row.id] = found
        while len(_KNOWN) > _KNOWN_CACHE_SIZE:
            _KNOWN.popitem(last=False)
    return found


def unknown_names_message(unknown: list[str], known: frozenset[str]) -> str:
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    return (f"unknown metric name(s) {', '.join(hints)}; this experiment's config records: "
            f"{', '.join(sorted(known))}")


def check_names(names: list[str], known: frozenset[str]) -> None:
    """422 for names no config of the request records (a name not written *yet* is fine)."""
    unknown = [n for n in names if n not in known]
    if unknown:
        raise RequestValidationError([{"loc": ("query", "names"), "type": "unknown_metric",
                                       "msg": unknown_names_message(unknown, known)}])


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

    To follow a running experiment, send `next_after_step` back as `after_step`, at once while
    `has_more` is true, else after a pause: no point is ever missed or repeated. When nothing
    is new, `next_after_step` is the `after_step` sent. Unknown `names` are a 422 that lists
    the names this experiment's config records.
    """
    # One thread hop for the whole request (session, auth, the experiment, the page and its
    # JSON), not one per dependency: pollers call this many times a second.
    return await run_in_threadpool(_read_metrics, request, experiment_id, names, after_step,
                                   limit)


def _read_metrics(request: Request, experiment_id: uuid.UUID, names: str | None,
                  after_step: int, limit: int) -> Response:
    with authorized_session(request) as (session, principal):
        row = load(session, experiment_id, principal)
        wanted = parse_names(names)
        if wanted is not None:
            check_names(wanted, known_names(row))
        page = metrics.read_row_page(session, experiment_id, after_step=after_step,
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
def metric_names(experiment_id: uuid.UUID, session: SessionDep,
                 principal: PrincipalDep) -> list[MetricNameOut]:
    load(session, experiment_id, principal)
    return [MetricNameOut(name=n.name, count=n.count, last_step=n.last_step)
            for n in metrics.names(session, experiment_id)]
