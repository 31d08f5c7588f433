"""Server-Sent Events: status changes and new metric points of one experiment, live.

Events: ``status`` on every status change, ``metrics`` (new points, batched; the event id is the
last step it holds), ``end`` (terminal status; the stream then closes). A client reconnecting with
``Last-Event-ID`` resumes after that step: nothing missed, nothing repeated. The stream holds no
database connection between polls, so hundreds of open streams cost only their polls.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Annotated, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import select

from app.api import headers
from app.api.deps import SettingsDep, resolve_principal
from app.api.routes.experiments import NOT_FOUND, load
from app.api.schemas import MetricPointOut
from app.core.config import Settings
from app.db import metrics
from app.db.experiments import FINISHED
from app.db.models import MAX_STEP, Experiment
from app.db.session import session_scope

router = APIRouter(prefix="/experiments", tags=["metrics"])
HEARTBEAT_S = 10.0
BATCH = 5000
# Streams poll through threads of their own, at most this many at once: however many streams are
# open, the server's shared thread pool (every other sync request) and the database pool keep
# room for other requests. More threads would not poll faster on a 2-core machine anyway.
POLL_THREADS = 4
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)
T = TypeVar("T")


async def _in_poll_thread(func: Callable[..., T], *args: object) -> T:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = CapacityLimiter(POLL_THREADS)
    return await anyio.to_thread.run_sync(func, *args, limiter=limiter)


def _poll(settings: Settings, experiment_id: uuid.UUID, after: int) -> tuple[str, str, int | None]:
    """(status, metrics JSON, next_after). Status is read *before* the points: the worker commits
    every point before the terminal status, so a terminal status means no points are pending."""
    with session_scope(settings.database_url) as session:
        found = session.scalar(select(Experiment.status).where(Experiment.id == experiment_id))
        status = found if found is not None else "deleted"
        points, next_after = metrics.read_page(session, experiment_id, after_step=after,
                                               limit=BATCH)
    payload = ",".join(
        MetricPointOut(name=p.name, step=p.step, epoch=p.epoch, value=p.value,
                       wall_time=p.wall_time).model_dump_json()
        for p in points
    )
    return status, f"[{payload}]", next_after


def _event(kind: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


async def _events(request: Request, settings: Settings, experiment_id: uuid.UUID,
                  after: int) -> AsyncIterator[str]:
    last_status, last_sent = None, time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        status, batch, next_after = await _in_poll_thread(_poll, settings, experiment_id, after)
        if status != last_status:
            yield _event("status", json.dumps({"status": status}))
            last_status, last_sent = status, time.monotonic()
        if next_after is not None:
            yield _event("metrics", batch, next_after)
            after, last_sent = next_after, time.monotonic()
            continue  # drain what is there before sleeping
        if status in FINISHED or status == "deleted":
            yield _event("end", json.dumps({"status": status}))
            return
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(settings.stream_poll_s)


@router.get(
    "/{experiment_id}/stream",
    responses={200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"},
               **NOT_FOUND},
)
async def stream(
    experiment_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Live status and metrics as Server-Sent Events; resume with `Last-Event-ID`."""
    # Auth and the ownership check use a session of their own, closed before streaming starts:
    # a dependency's session would hold a database connection for the stream's whole life.
    def check() -> None:
        with session_scope(settings.database_url) as session:
            load(session, experiment_id, resolve_principal(request, session, settings))

    await _in_poll_thread(check)
    resumed = headers.event_id(last_event_id)
    # An id no stream sent must not overflow a database integer.
    after = -1 if resumed is None else min(resumed, MAX_STEP)
    return StreamingResponse(
        _events(request, settings, experiment_id, after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
