"""Many concurrent SSE streams on one experiment, and a /healthz prober beside them: shared by
tests/integration/test_stream_live.py (does every stream follow, does the API keep answering)
and bench/streams.py (how fast it keeps answering)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from tests.waiting import HANG_S


class HealthProbe(threading.Thread):
    """GET /healthz every 100 ms on its own connection and thread, recording latencies."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=HANG_S) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    response = client.get("/healthz")
                    if response.status_code != 200:
                        self.errors.append(f"status {response.status_code}")
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                self.latencies.append(time.perf_counter() - started)
                self.stop.wait(0.1)


@dataclass
class Streams:
    """What each stream has received so far."""

    got_status: list[bool]
    metrics: list[int]
    opened_s: float = math.inf  # seconds until every stream had its status event

    @property
    def following(self) -> int:
        return sum(m > 0 for m in self.metrics)


async def follow(base_url: str, experiment_id: str, after: int, count: int,
                 done: Callable[[Streams], bool]) -> Streams:
    """``count`` concurrent streams of one experiment from step ``after``; once every one has its
    status event, they stay open until ``done(streams)`` holds, then all close."""
    streams = Streams([False] * count, [0] * count)
    url = f"/api/v1/experiments/{experiment_id}/stream"
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    timeout = httpx.Timeout(HANG_S, pool=HANG_S)
    all_open = asyncio.Event()

    async def one(i: int, client: httpx.AsyncClient) -> None:
        async with client.stream("GET", url, headers={"Last-Event-ID": str(after)}) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line == "event: status":
                    streams.got_status[i] = True
                    if all(streams.got_status):
                        all_open.set()
                elif line == "event: metrics":
                    streams.metrics[i] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(one(i, client)) for i in range(count)]
        try:
            await asyncio.wait_for(all_open.wait(), timeout=HANG_S)
            streams.opened_s = time.monotonic() - started
            give_up = time.monotonic() + HANG_S
            while not done(streams):
                assert time.monotonic() < give_up, f"streams never done: {streams.metrics}"
                await asyncio.sleep(0.05)
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if not isinstance(r, asyncio.CancelledError | type(None))]
    assert not failures, failures[:3]
    return streams
