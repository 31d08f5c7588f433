"""The SSE stream on the real stack (uvicorn API + celery worker + Postgres + Redis).

(a) A client that drops its connection mid-run and reconnects with Last-Event-ID receives every
metric point of the run exactly once, then `end` (the run is cancelled, so it ends on cue).
(b) 200 concurrent streams on a running experiment all follow it, and do not starve other
requests: GET /healthz keeps answering (how fast: bench/streams.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

from tests.api.helpers import Event
from tests.api.helpers import parse_sse as parse
from tests.integration.conftest import SMALL, TERMINAL, all_points, wait_status
from tests.integration.streams import HealthProbe, Streams, follow
from tests.waiting import HANG_S, wait_until

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
    timeout: float = HANG_S,
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
    names = f"/api/v1/experiments/{experiment_id}/metrics/names"
    wait_until(  # points keep arriving while the client is away
        lambda: max(n["last_step"] for n in distributed.get(names).json()) > int(last_id),
        "points written while disconnected",
    )
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


def test_200_streams_do_not_starve_other_requests(distributed: httpx.Client) -> None:
    """Functional only: every stream opens and follows, and /healthz keeps answering meanwhile.
    How fast it answers is measured by bench/streams.py (docs/benchmarks.md)."""
    experiment_id = submit(distributed, ENDLESS)
    try:
        wait_status(distributed, experiment_id, {"running"})
        path = f"/api/v1/experiments/{experiment_id}/metrics/names"
        names = wait_until(lambda: distributed.get(path).json(), "the first points")
        after = max(n["last_step"] for n in names)  # a dashboard that has history
        probe = HealthProbe(str(distributed.base_url))
        probe.start()
        answered_before: list[int] = []

        def enough(streams: Streams) -> bool:
            """Half the streams have new points, and /healthz answered 3 times with all open."""
            if not answered_before:
                answered_before.append(len(probe.latencies))
            answered = len(probe.latencies) - answered_before[0]
            return streams.following >= STREAMS // 2 and answered >= 3

        try:
            wait_until(lambda: probe.latencies, "the first /healthz answer")
            streams = asyncio.run(
                follow(str(distributed.base_url), experiment_id, after, STREAMS, enough)
            )
        finally:
            probe.stop.set()
            probe.join(HANG_S)
        assert all(streams.got_status), "a stream never got its status event"
        assert not probe.errors, probe.errors[:3]
        # The API still does real work afterwards, and the streams are gone from it.
        page = distributed.get(f"/api/v1/experiments/{experiment_id}/metrics?limit=10")
        assert page.status_code == 200 and page.json()["items"]
    finally:
        distributed.post(f"/api/v1/experiments/{experiment_id}/cancel")
        done = wait_status(distributed, experiment_id, TERMINAL)
        assert done["status"] == "cancelled", done
