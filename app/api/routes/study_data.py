"""A study's learning curves, live progress (SSE) and its members as CSV."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

import anyio.to_thread
import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app.api.deps import SettingsDep, authorized_session, resolve_principal
from app.api.etag import etag_body
from app.api.routes.series import MetricPath
from app.api.routes.stream import HEARTBEAT_S
from app.api.routes.studies import NOT_FOUND, load_study
from app.core.config import Settings
from app.db import studies
from app.db.session import session_scope
from app.studies import service
from app.studies.results import progress

router = APIRouter(prefix="/studies", tags=["studies"])


@router.get("/{study_id}/curves", responses={200: {"description": "Per-cell curves"},
                                             **NOT_FOUND})
async def get_curves(
    study_id: uuid.UUID, request: Request,
    metric: Annotated[MetricPath, Query(description="A metric name")] = "val_accuracy",
    points: Annotated[int, Query(ge=1, le=2000)] = 200,
) -> Response:
    """Per cell, on one step grid shared by all members: mean across seeds, a 95% band, min,
    max, and the number of members in each bucket."""
    def read() -> Response:
        with authorized_session(request) as (session, principal):
            record = load_study(session, study_id, principal)
            body = orjson.dumps(service.curves(session, record, metric, points))
        return etag_body(request, body)

    return await run_in_threadpool(read)


@router.get("/{study_id}/results.csv", response_class=Response,
            responses={200: {"content": {"text/csv": {}}, "description": "One row per member"},
                       **NOT_FOUND})
async def get_results_csv(study_id: uuid.UUID, request: Request) -> Response:
    """Levels, seed, status, response and the main summary fields of every member."""
    def read() -> Response:
        with authorized_session(request) as (session, principal):
            record = load_study(session, study_id, principal)
            text = service.results_csv(session, record)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in record.name)
        return Response(text, media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="{safe}-{study_id}.csv"'})

    return await run_in_threadpool(read)


def _poll(settings: Settings, study_id: uuid.UUID) -> dict[str, object] | None:
    with session_scope(settings.database_url) as session:
        if studies.get(session, study_id) is None:
            return None
        counts = studies.progress(session, study_id)
    return progress([s for s, n in counts.items() for _ in range(n)], sum(counts.values()))


async def _events(request: Request, settings: Settings, study_id: uuid.UUID
                  ) -> AsyncIterator[str]:
    last, last_sent = None, time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        current = await anyio.to_thread.run_sync(_poll, settings, study_id)
        if current is None:
            yield f"event: end\ndata: {json.dumps({'deleted': True})}\n\n"
            return
        if current != last:
            yield f"event: progress\ndata: {json.dumps(current)}\n\n"
            last, last_sent = current, time.monotonic()
        if current["terminal"]:
            yield f"event: end\ndata: {json.dumps(current)}\n\n"
            return
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(settings.stream_poll_s)


@router.get("/{study_id}/stream", responses={
    200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"}, **NOT_FOUND})
async def stream_study(study_id: uuid.UUID, request: Request,
                       settings: SettingsDep) -> StreamingResponse:
    """`progress` events (member counts by status) on every change; `end` once every member
    is terminal (or the study was deleted)."""
    def check() -> None:  # a session of its own, closed before the stream starts
        with session_scope(settings.database_url) as session:
            load_study(session, study_id, resolve_principal(request, session, settings))

    await anyio.to_thread.run_sync(check)
    return StreamingResponse(_events(request, settings, study_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
