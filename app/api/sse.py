"""The Server-Sent Events loop shared by the live streams (an experiment's, a study's): poll in
a thread of the streams' own, send what changed, a heartbeat when silent, stop when done or
when the client has gone. A stream holds no database connection between polls, so hundreds of
open streams cost only their polls."""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Request
from fastapi.responses import StreamingResponse

HEARTBEAT_S = 10.0
# Streams poll through threads of their own, at most this many at once: however many streams are
# open, the server's shared thread pool (every other sync request) and the database pool keep
# room for other requests. More threads would not poll faster on a 2-core machine anyway.
POLL_THREADS = 4
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)
T = TypeVar("T")


async def in_poll_thread(func: Callable[..., T], *args: object) -> T:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = CapacityLimiter(POLL_THREADS)
    return await anyio.to_thread.run_sync(func, *args, limiter=limiter)


def event(kind: str, data: str, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {kind}\ndata: {data}\n\n"


@dataclass
class Tick:
    """What one poll has to send, and what comes next."""

    events: list[str] = field(default_factory=list)
    done: bool = False  # the stream ends after these events
    again: bool = False  # more is waiting: poll again at once, without a pause


async def events(request: Request, poll_s: float,
                 tick: Callable[[], Awaitable[Tick]]) -> AsyncIterator[str]:
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        found = await tick()
        for text in found.events:
            yield text
        if found.events:
            last_sent = time.monotonic()
        if found.done:
            return
        if found.again:
            continue  # drain what is there before sleeping
        if time.monotonic() - last_sent >= HEARTBEAT_S:
            yield ": heartbeat\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(poll_s)


def response(stream: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
