"""What counting requests for Prometheus costs: the same app with and without the
``RequestMetrics`` middleware, side by side, answering in-process ASGI calls (no network, so the
middleware's share is not diluted by sockets).

    python3 bench/request_metrics.py [--requests 3000] [--rounds 5]

Prints per-request microseconds for GET /healthz and the polled GET /experiments/{id}, each
variant's median over the rounds (interleaved), and their ratio; then the middleware's own work
per request (route template, counter, histogram), timed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import httpx

from app.api.instrumentation import RequestMetrics
from app.core.config import Settings
from app.main import create_app
from tests.api.helpers import FakeDispatcher


def build(instrumented: bool, settings: Settings) -> Any:
    app = create_app(settings, dispatcher=FakeDispatcher())
    if not instrumented:
        app.user_middleware = [m for m in app.user_middleware if m.cls is not RequestMetrics]
    return app


async def timed(app: Any, path: str, n: int) -> float:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(50):  # warm up
            await client.get(path)
        started = time.perf_counter()
        for _ in range(n):
            response = await client.get(path)
            assert response.status_code == 200
        return (time.perf_counter() - started) / n * 1e6


async def main(requests: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/b.db", data_dir=Path(tmp))
        from app.db.migrate import upgrade

        upgrade(settings.database_url)
        apps = {True: build(True, settings), False: build(False, settings)}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=apps[True]),
                                     base_url="http://bench") as client:
            experiment = (await client.post("/api/v1/experiments", json={})).json()["id"]
        for path in ("/healthz", f"/api/v1/experiments/{experiment}"):
            times: dict[bool, list[float]] = {True: [], False: []}
            for _ in range(rounds):
                for instrumented in (False, True):
                    times[instrumented].append(await timed(apps[instrumented], path, requests))
            plain, counted = statistics.median(times[False]), statistics.median(times[True])
            print(f"{path.split('/')[-1] if 'healthz' in path else 'GET /experiments/{id}':24s}"
                  f" without {plain:7.1f} µs  with {counted:7.1f} µs  ratio {counted / plain:.3f}")


def own_work(n: int = 100_000) -> float:
    """Microseconds of what the middleware adds per request, without the request."""
    import uuid

    from app.api.instrumentation import _series, route_template

    class Route:
        path = "/experiments/{experiment_id}"

    ident = str(uuid.uuid4())
    scope = {"route": Route(), "path_params": {"experiment_id": ident},
             "path": f"/api/v1/experiments/{ident}", "method": "GET"}
    started = time.perf_counter()
    for _ in range(n):
        count, seconds = _series((scope["method"], route_template(scope), "200"))
        count.inc()
        seconds.observe(0.001)
    return (time.perf_counter() - started) / n * 1e6


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.requests, args.rounds))
    print(f"middleware's own work per request: {own_work():.1f} µs")
