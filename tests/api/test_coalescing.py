"""app.api.coalescing: identical concurrent reads share one query, and never a stale one."""

from __future__ import annotations

import asyncio

import pytest

from app.api.coalescing import Coalescer


class Source:
    """A fake query: counts its runs; each run returns its number, when released."""

    def __init__(self) -> None:
        self.runs = 0
        self.release = asyncio.Event()
        self.fail = False

    async def fetch(self) -> int:
        self.runs += 1
        number = self.runs
        await self.release.wait()
        if self.fail:
            raise RuntimeError(f"query {number} failed")
        return number


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_concurrent_requests_share_one_query() -> None:
    async def main() -> None:
        coalescer: Coalescer[int] = Coalescer()
        source = Source()
        waiters = [asyncio.create_task(coalescer.get("a", source.fetch)) for _ in range(50)]
        await settle()
        source.release.set()
        assert await asyncio.gather(*waiters) == [1] * 50
        assert source.runs == 1

    asyncio.run(main())


def test_a_request_never_joins_a_query_already_running() -> None:
    """Arrivals during a query wait for the next one (which may see a newer write), and all of
    them share that next one."""
    async def main() -> None:
        coalescer: Coalescer[int] = Coalescer()
        source = Source()
        first = asyncio.create_task(coalescer.get("a", source.fetch))
        await settle()
        assert source.runs == 1  # running, not released
        late = [asyncio.create_task(coalescer.get("a", source.fetch)) for _ in range(10)]
        await settle()
        assert source.runs == 1  # the late ones wait for the first to end
        source.release.set()
        assert await first == 1
        assert await asyncio.gather(*late) == [2] * 10
        assert source.runs == 2

    asyncio.run(main())


def test_keys_do_not_share_and_errors_reach_every_waiter() -> None:
    async def main() -> None:
        coalescer: Coalescer[int] = Coalescer()
        source = Source()
        source.fail = True
        a = [asyncio.create_task(coalescer.get("a", source.fetch)) for _ in range(3)]
        b = asyncio.create_task(coalescer.get("b", source.fetch))
        await settle()
        assert source.runs == 2
        source.release.set()
        for task in [*a, b]:
            with pytest.raises(RuntimeError, match="failed"):
                await task
        source.fail = False
        assert await coalescer.get("a", source.fetch) == 3  # a failure is not remembered

    asyncio.run(main())


def test_a_waiter_that_goes_away_does_not_cancel_the_others() -> None:
    async def main() -> None:
        coalescer: Coalescer[int] = Coalescer()
        source = Source()
        leaving = asyncio.create_task(coalescer.get("a", source.fetch))
        staying = asyncio.create_task(coalescer.get("a", source.fetch))
        await settle()
        leaving.cancel()
        await settle()
        source.release.set()
        assert await staying == 1
        assert leaving.cancelled()

    asyncio.run(main())


def test_a_cancelled_query_frees_its_key() -> None:
    """A query cancelled while it runs or waits (its event loop shutting down) leaves nothing
    behind: the next request for the key runs a query of its own."""
    async def main() -> None:
        coalescer: Coalescer[int] = Coalescer()
        source = Source()
        running = asyncio.create_task(coalescer.get("a", source.fetch))
        await settle()
        waiting = asyncio.create_task(coalescer.get("a", source.fetch))
        await settle()
        for task in list(coalescer._tasks):
            task.cancel()
        await settle()
        assert running.cancelled() and waiting.cancelled()
        assert not coalescer._next and not coalescer._running
        source.release.set()
        assert await coalescer.get("a", source.fetch) == source.runs

    asyncio.run(main())
