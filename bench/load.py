"""Load: concurrent pollers against the distributed stack while experiments train.

    python3 bench/load.py [--pollers 50] [--experiments 4] [--duration 60]

Starts the API (`normlab serve`, Postgres + Redis) and one Celery worker running the experiments
side by side, on a fresh database it creates and drops. Phase 1 trains the experiments alone for
`duration` seconds; phase 2 trains them again while `pollers` clients poll (GET experiment with
If-None-Match, then the metric page after their last step). Prints requests/s, p50/p99 latency,
the 5xx count (must be 0), and how much the pollers slowed training (samples/s, side by side).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.integration.conftest import service_env, start_api, start_worker

BODY = {
    "dataset": {"name": "synthetic", "synthetic": {"samples": 20_000, "features": 256}},
    "model": {"hidden_layers": [256, 128]},
    "training": {"epochs": 1000, "batch_size": 64},
    "resources": {"device": "cpu"},
}


def train_for(client: httpx.Client, n: int, duration: float) -> list[float]:
    """Start n experiments, let them train `duration` s, cancel; return their samples/s."""
    ids = [client.post("/api/v1/experiments", json=BODY).json()["id"] for _ in range(n)]
    time.sleep(duration)
    return cancel_and_rates(client, ids)


def cancel_and_rates(client: httpx.Client, ids: list[str]) -> list[float]:
    """Cancel the experiments, wait until they stop, return each one's training samples/s."""
    for experiment_id in ids:
        client.post(f"/api/v1/experiments/{experiment_id}/cancel")
    rates = []
    for experiment_id in ids:
        while (body := client.get(f"/api/v1/experiments/{experiment_id}").json())["status"] not in (
            "cancelled",
            "failed",
            "succeeded",
        ):
            time.sleep(0.5)
        rates.append(float((body.get("summary") or {}).get("samples_per_s") or 0.0))
    return rates


async def poller(
    base: str, ids: list[str], stop: float, out: list[tuple[float, int]], interval: float
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        etags: dict[str, str] = {}
        after = dict.fromkeys(ids, -1)
        k = 0
        while time.monotonic() < stop:
            await asyncio.sleep(interval)  # a dashboard's refresh period (0: as fast as possible)
            experiment_id = ids[k % len(ids)]
            k += 1
            for path, params, headers in (
                (
                    f"/api/v1/experiments/{experiment_id}",
                    None,
                    {"If-None-Match": etags.get(experiment_id, "")},
                ),
                (
                    f"/api/v1/experiments/{experiment_id}/metrics",
                    {"after_step": after[experiment_id], "limit": 1000},
                    None,
                ),
            ):
                started = time.perf_counter()
                response = await client.get(path, params=params, headers=headers)
                out.append((time.perf_counter() - started, response.status_code))
                if response.status_code == 200 and "metrics" not in path:
                    etags[experiment_id] = response.headers.get("etag", "")
                elif response.status_code == 200:
                    nxt = response.json()["next_after_step"]
                    after[experiment_id] = nxt if nxt is not None else after[experiment_id]


async def poll_while_training(
    base: str, client: httpx.Client, n: int, pollers: int, duration: float, interval: float
) -> tuple[list[float], list[tuple[float, int]]]:
    ids = [client.post("/api/v1/experiments", json=BODY).json()["id"] for _ in range(n)]
    results: list[tuple[float, int]] = []
    stop = time.monotonic() + duration
    await asyncio.gather(*(poller(base, ids, stop, results, interval) for _ in range(pollers)))
    return cancel_and_rates(client, ids), results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pollers", type=int, default=50)
    parser.add_argument("--experiments", type=int, default=4)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="pause between a poller's polls (0: as fast as possible)",
    )
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    db = f"normlab_load_{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", f"CREATE DATABASE {db}"], check=True
    )
    tmp = Path(tempfile.mkdtemp(prefix="normlab-load-"))
    url = f"{args.postgres}/{db}"
    env = service_env(
        tmp,
        NORMLAB_DATABASE_URL=url,
        NORMLAB_BROKER_URL=args.redis,
        NORMLAB_METRIC_FLUSH_S="1.0",
        NORMLAB_TORCH_THREADS="1",
    )
    subprocess.run(
        [sys.executable, "-m", "app.cli.main", "migrate"], env=env, check=True, capture_output=True
    )
    worker = api = None
    try:
        # One pool process per experiment, so the experiments train side by side.
        worker = start_worker(env, tmp, name="load", concurrency=args.experiments)
        api, base = start_api(env, tmp)
        with httpx.Client(base_url=base, timeout=30) as client:
            alone = train_for(client, args.experiments, args.duration)
            loaded, results = asyncio.run(
                poll_while_training(
                    base, client, args.experiments, args.pollers, args.duration, args.interval
                )
            )
    finally:
        for process in (api, worker):
            if process is not None:
                process.stop()
        subprocess.run(
            [
                "psql",
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-qc",
                f"DROP DATABASE IF EXISTS {db} WITH (FORCE)",
            ],
            check=False,
        )

    latencies = sorted(r[0] for r in results)
    errors = sum(1 for _, code in results if code >= 500)
    print(
        f"machine: {os.cpu_count()} cores; {args.pollers} pollers, {args.experiments} "
        f"experiments, {args.duration:.0f} s per phase"
    )
    print(
        f"requests: {len(results)} in {args.duration:.0f} s = {len(results) / args.duration:,.0f}"
        f" req/s; p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms; 5xx: {errors}"
    )
    a, b = statistics.mean(alone), statistics.mean(loaded)
    print(
        f"training samples/s per experiment: alone {a:,.0f}, under polling {b:,.0f} "
        f"(ratio {b / a:.2f}, slowdown {(1 - b / a) * 100:.0f}%)"
    )


if __name__ == "__main__":
    main()
