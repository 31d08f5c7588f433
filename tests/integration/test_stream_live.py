"""The SSE stream on the real stack (uvicorn API + celery worker + Postgres + Redis).

(a) A client that drops its connection mid-run and reconnects with Last-Event-ID receives every
metric point of the run exactly once, then `end` (the run is cancelled, so it ends on cue).
(b) 200 concurrent streams on a running experiment do not starve other requests: GET /healthz
keeps answering in well under a second.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from typing import Any

import httpx

from tests.api.helpers import Event
from tests.api.helpers import parse_sse as parse
from tests.integration.conftest import SMALL, TERMINAL, all_points, wait_status

# Runs until cancelled: the tests watch it train, then cancel it.
ENDLESS: dict[str, Any] = {**SMALL, "training": {"epochs": 1000, "batch_size": 16}}
STREAMS = 200


def submit(client: httpx.Client, body: dict[str, Any]) -> str:
    response = client.post("/api/v1/experiments", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def read_stream(
    client: httpx.Client,
    experiment_id: str,
    *,
    last_event_id: str | None = None,
    drop_after: int | None = None,
    cancel_after: int | None = None,
    timeout: float = 120,
) -> list[Event]:
    """Events until the server ends the stream; or drop the connection after ``drop_after``
    metrics events; or cancel the experiment after ``cancel_after`` and read on to the end."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    url = f"/api/v1/experiments/{experiment_id}/stream"
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        for event in parse(response.iter_lines()):
            events.append(event)
            if event.get("event") == "metrics":
                seen = sum(e.get("event") == "metrics" for e in events)
                if seen == drop_after:
                    break  # leaving the block drops the connection mid-stream
                if seen == cancel_after:
                    cancelled = client.post(f"/api/v1/experiments/{experiment_id}/cancel")
                    assert cancelled.status_code == 202, cancelled.text
            assert time.monotonic() < deadline, f"stream open after {timeout}s"
    return events


def points_of(events: list[Event]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        if event.get("event") == "metrics":
            batch = json.loads(event["data"])
            assert int(event["id"]) == batch[-1]["step"] == max(p["step"] for p in batch)
            out += batch
    return out


def test_drop_and_resume_receives_every_point_exactly_once(distributed: httpx.Client) -> None:
    experiment_id = submit(distributed, ENDLESS)
    wait_status(distributed, experiment_id, {"running"})
    first = read_stream(distributed, experiment_id, drop_after=2)
    assert [e["data"] for e in first if e.get("event") == "status"] == ['{"status": "running"}']
    last_id = [e for e in first if e.get("event") == "metrics"][-1]["id"]
    time.sleep(1.0)  # points keep arriving while the client is away
    # Back with Last-Event-ID; once more points came, cancel the run and read on to its end.
    second = read_stream(distributed, experiment_id, last_event_id=last_id, cancel_after=2)
    assert second[-1] == {"event": "end", "data": '{"status": "cancelled"}'}, second[-3:]
    statuses = [json.loads(e["data"])["status"] for e in second if e.get("event") == "status"]
    assert statuses[0] == "running" and statuses[-1] == "cancelled"
    assert wait_status(distributed, experiment_id, TERMINAL)["status"] == "cancelled"

    got_first, got_second = points_of(first), points_of(second)
    assert got_second and min(p["step"] for p in got_second) > int(last_id)
    received = got_first + got_second
    keys = [(p["name"], p["step"]) for p in received]
    assert len(keys) == len(set(keys)), "a point came twice"
    stored = all_points(distributed, experiment_id)
    by_key = {(p["name"], p["step"]): p for p in stored}
    assert set(keys) == set(by_key), f"missing {len(set(by_key) - set(keys))} points"
    assert all(p == by_key[(p["name"], p["step"])] for p in received)
    steps = [int(e["id"]) for e in first + second if e.get("event") == "metrics"]
    assert steps == sorted(steps) and len(steps) == len(set(steps))


class HealthProbe(threading.Thread):
    """GET /healthz every 100 ms on its own connection and thread, recording latencies."""

    def __init__(self, base_url: str) -> None:
        super().__init__(daemon=True)
        self.base_url = base_url
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=10) as client:
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


async def open_streams(
    base_url: str, experiment_id: str, after: int, steady_s: float, limit_s: float
) -> tuple[list[bool], list[int], float]:
    """STREAMS concurrent streams; returns (got a status event, metrics events, seconds until
    every stream had its status event)."""
    got_status = [False] * STREAMS
    metrics = [0] * STREAMS
    all_open = asyncio.Event()
    url = f"/api/v1/experiments/{experiment_id}/stream"
    limits = httpx.Limits(max_connections=STREAMS + 10, max_keepalive_connections=STREAMS + 10)
    timeout = httpx.Timeout(30.0, pool=30.0)

    async def one(i: int, client: httpx.AsyncClient) -> None:
        headers = {"Last-Event-ID": str(after)}
        async with client.stream("GET", url, headers=headers) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line == "event: status":
                    got_status[i] = True
                    if all(got_status):
                        all_open.set()
                elif line == "event: metrics":
                    metrics[i] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(one(i, client)) for i in range(STREAMS)]
        try:
            await asyncio.wait_for(all_open.wait(), timeout=limit_s)
            opened = time.monotonic() - started
            await asyncio.sleep(steady_s)  # all 200 open and following the run
        except TimeoutError:
            opened = float("inf")
        finally:
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [r for r in results if not isinstance(r, asyncio.CancelledError | type(None))]
    assert not failures, failures[:3]
    return got_status, metrics, opened


def test_200_streams_do_not_starve_other_requests(distributed: httpx.Client) -> None:
    experiment_id = submit(distributed, ENDLESS)
    try:
        wait_status(distributed, experiment_id, {"running"})
        time.sleep(1.0)
        names = distributed.get(f"/api/v1/experiments/{experiment_id}/metrics/names").json()
        after = max((n["last_step"] for n in names), default=-1)  # a dashboard that has history
        probe = HealthProbe(str(distributed.base_url))
        probe.start()
        try:
            time.sleep(0.5)
            got_status, metrics, opened = asyncio.run(
                open_streams(str(distributed.base_url), experiment_id, after, 5.0, 20.0)
            )
        finally:
            probe.stop.set()
            probe.join(15)
        assert all(got_status), f"{got_status.count(False)} streams never got their status event"
        assert opened < 20.0
        assert probe.latencies and not probe.errors, probe.errors[:3]
        worst, median = max(probe.latencies), statistics.median(probe.latencies)
        summary = (
            f"{len(probe.latencies)} healthz: median {median * 1000:.0f} ms, max "
            f"{worst * 1000:.0f} ms; all {STREAMS} streams open after {opened:.1f} s; "
            f"metrics events per stream: min {min(metrics)}, median {statistics.median(metrics)}"
        )
        print(summary)
        assert worst < 1.0, summary
        assert sum(m > 0 for m in metrics) >= STREAMS // 2, summary  # they followed the run
        # The API still does real work afterwards, and the streams are gone from it.
        page = distributed.get(f"/api/v1/experiments/{experiment_id}/metrics?limit=10")
        assert page.status_code == 200 and page.json()["items"]
    finally:
        distributed.post(f"/api/v1/experiments/{experiment_id}/cancel")
        done = wait_status(distributed, experiment_id, TERMINAL, timeout=60)
        assert done["status"] == "cancelled", done
