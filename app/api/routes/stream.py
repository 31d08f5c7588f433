"""Server-Sent Events: status changes and new metric points of one experiment, live.

Events: ``status`` on every status change, ``metrics`` (new points, batched; the event id is the
last step it holds), ``end`` (terminal status; the stream then closes). A client reconnecting with
``Last-Event-ID`` resumes after that step: nothing missed, nothing repeated.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import StreamingResponse

from app.api import headers, sse
from app.api.deps import NOT_FOUND, ExperimentDep
from app.api.schemas import MetricPointOut
from app.core.config import Settings
from app.db import experiments, metrics
from app.db.experiments import FINISHED
from app.db.models import MAX_STEP
from app.db.session import session_scope

router = APIRouter(prefix="/experiments", tags=["metrics"])
BATCH = 5000


def _poll(settings: Settings, experiment_id: uuid.UUID, after: int) -> tuple[str, str, int | None]:
    """(status, metrics JSON, next_after). Status is read *before* the points: the worker commits
    every point before the terminal status, so a terminal status means no points are pending."""
    with session_scope(settings.database_url) as session:
        status = experiments.status_of(session, experiment_id) or "deleted"
        points, next_after = metrics.read_page(session, experiment_id, after_step=after,
                                               limit=BATCH)
    payload = ",".join(
        MetricPointOut(name=p.name, step=p.step, epoch=p.epoch, value=p.value,
                       wall_time=p.wall_time).model_dump_json()
        for p in points
    )
    return status, f"[{payload}]", next_after


def _events(request: Request, settings: Settings, experiment_id: uuid.UUID,
            after: int) -> AsyncIterator[str]:
    last_status: str | None = None

    async def tick() -> sse.Tick:
        nonlocal after, last_status
        status, batch, next_after = await sse.in_poll_thread(_poll, settings, experiment_id,
                                                             after)
        found = sse.Tick()
        if status != last_status:
            found.events.append(sse.event("status", json.dumps({"status": status})))
            last_status = status
        if next_after is not None:
            found.events.append(sse.event("metrics", batch, next_after))
            after, found.again = next_after, True
        elif status in FINISHED or status == "deleted":
            found.events.append(sse.event("end", json.dumps({"status": status})))
            found.done = True
        return found

    return sse.events(request, settings.stream_poll_s, tick)


@router.get(
    "/{experiment_id}/stream",
    responses={200: {"content": {"text/event-stream": {}}, "description": "An SSE stream"},
               **NOT_FOUND},
)
async def stream(
    access: ExperimentDep,
    request: Request,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> StreamingResponse:
    """Live status and metrics as Server-Sent Events; resume with `Last-Event-ID`."""
    # Auth and the ownership check use a session of their own, closed before streaming starts:
    # a session held by the response would hold a database connection for the stream's life.
    await sse.in_poll_thread(access.record)
    resumed = headers.event_id(last_event_id)
    # An id no stream sent must not overflow a database integer.
    after = -1 if resumed is None else min(resumed, MAX_STEP)
    return sse.response(_events(request, access.caller.settings, access.id, after))
