"""Coalesced reads: concurrent requests for the same thing share one database query.

Fifty dashboards polling one run send fifty identical queries; here they wait for one. A request
never joins a query that was already running when it arrived (that query may predate a write
the caller has just seen committed): it waits for the next one, which starts as soon as the
running one ends and serves everybody who arrived in between. So every answer is at least as
fresh as the request, and a key costs at most one query in flight at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Coalescer(Generic[V]):
    def __init__(self) -> None:
        self._next: dict[Hashable, asyncio.Future[V]] = {}  # not started: new arrivals join
        self._running: dict[Hashable, asyncio.Future[V]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # strong references while they run

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[V]]) -> V:
        waiting = self._next.get(key)
        if waiting is None:
            waiting = self._next[key] = asyncio.get_running_loop().create_future()
            task = asyncio.create_task(self._run(key, waiting, fetch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        # shield: a caller that goes away (client disconnect) does not cancel the others' query
        return await asyncio.shield(waiting)

    async def _run(self, key: Hashable, future: asyncio.Future[V],
                   fetch: Callable[[], Awaitable[V]]) -> None:
        try:
            running = self._running.get(key)
            if running is not None:
                await asyncio.wait([running])
            del self._next[key]  # from here on, arrivals wait for the query after this one
            self._running[key] = future
            future.set_result(await fetch())
        except asyncio.CancelledError:
            future.cancel()  # the loop is going away: so are the waiters
            raise
        except Exception as exc:
            future.set_exception(exc)
        finally:
            # Whatever happened, the key is free again: nothing waits on a future nobody sets.
            if self._next.get(key) is future:
                del self._next[key]
            if self._running.get(key) is future:
                del self._running[key]
            if not future.done():
                future.cancel()
            if not future.cancelled():
                future.exception()  # retrieved: no "never retrieved" warning if nobody waits
