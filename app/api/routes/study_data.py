"""A study's learning curves, live progress (SSE) and its members as CSV."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api import sse
from app.api.deps import STUDY_NOT_FOUND, StudyDep
from app.api.etag import etag_body
from app.api.params import MetricPath
from app.core.config import Settings
from app.db import studies
from app.db.session import session_scope
from app.studies import service
from app.studies.results import progress

router = APIRouter(prefix="/studies", tags=["studies"])


@router.get("/{study_id}/curves", responses={200: {"description": "Per-cell curves"},
                                             **STUDY_NOT_FOUND})
async def get_curves(
    access: StudyDep, request: Request,
    metric: Annotated[MetricPath, Query(description="A metric name")] = "val_accuracy",
    points: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> Response:
    """Per cell, on one step grid shared by all members: mean across seeds, a 95% band, min,
    max, and the number of members in each bucket."""
    def read() -> Response:
        with access.open() as (session, record):
            body = orjson.dumps(service.curves(session, record, metric, points))
        return etag_body(request, body)

    return await run_in_threadpool(read)


@router.get("/{study_id}/results.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "One row per member"},
                       **STUDY_NOT_FOUND})
async def get_results_csv(access: StudyDep) -> Response:
    """Levels, seed, status, response and the main summary fields of every member."""
    def read() -> Response:
        with access.open() as (session, record):
            text = service.results_csv(session, record)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.name)
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{safe}-{access.id}.csv"'})

    return await run_in_threadpool(read)


def _poll(settings: Settings, study_id: uuid.UUID) -> dict[str, object] | None:
    with session_scope(settings.database_url) as session:
        if studies.get(session, study_id) is None:
            return None
        counts = studies.progress(session, study_id)
    return progress([s for s, n in counts.items() for _ in range(n)], sum(counts.values()))


def _events(request: Request, settings: Settings, study_id: uuid.UUID) -> AsyncIterator[str]:
    last: dict[str, object] | None = None

    async def tick() -> sse.Tick:
        nonlocal last
        current = await sse.in_poll_thread(_poll, settings, study_id)
        if current is None:
            return sse.Tick([sse.event("end", json.dumps({"deleted": True}))], done=True)
        found = sse.Tick()
        if current != last:
            found.events.append(sse.event("progress", json.dumps(current)))
            last = current
        if current["terminal"]:
            found.events.append(sse.event("end", json.dumps(current)))
            found.done = True
        return found

    return sse.events(request, settings.stream_poll_s, tick)


@router.get("/{study_id}/stream", responses={
    200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"},
    **STUDY_NOT_FOUND})
async def stream_study(access: StudyDep, request: Request) -> StreamingResponse:
    """`progress` events (member counts by status) on every change; `end` once every member
    is terminal (or the study was deleted)."""
    await sse.in_poll_thread(access.record)  # a session of its own, closed before the stream
    return sse.response(_events(request, access.caller.settings, access.id))
