"""/healthz latency while many SSE streams follow a training run, side by side with none open.

    python3 bench/streams.py [--streams 200] [--seconds 10]

Starts the API (`normlab serve`, Postgres + Redis) and one Celery worker on a fresh database it
creates and drops, starts an experiment that trains until cancelled, then probes GET /healthz
every 100 ms on its own connection: for ``--seconds`` with no stream open, then for
``--seconds`` with ``--streams`` concurrent streams following the run (after all have opened).
Prints median, p99 and worst latency of each phase and their ratio, the seconds until every
stream had its first event, and how many streams received new points. The functional side (all
streams open and follow, /healthz keeps answering) is tests/integration/test_stream_live.py.
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
from tests.integration.conftest import SMALL, service_env, start_api, start_worker, wait_status
from tests.integration.streams import HealthProbe, Streams, follow

ENDLESS = {**SMALL, "training": {"epochs": 1000, "batch_size": 16}}  # trains until cancelled


def probe_for(base: str, seconds: float) -> HealthProbe:
    probe = HealthProbe(base)
    probe.start()
    time.sleep(seconds)
    probe.stop.set()
    probe.join()
    return probe


def line(label: str, probe: HealthProbe) -> str:
    ordered = sorted(probe.latencies)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return (f"{label}: {len(ordered)} /healthz, median {statistics.median(ordered) * 1e3:.1f} ms, "
            f"p99 {p99 * 1e3:.1f} ms, max {ordered[-1] * 1e3:.1f} ms, errors {len(probe.errors)}")


def psql(sql: str, check: bool = True) -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-qc", sql], check=check)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/13")
    args = parser.parse_args()

    db = f"normlab_streams_{uuid.uuid4().hex[:8]}"
    psql(f"CREATE DATABASE {db}")
    tmp = Path(tempfile.mkdtemp(prefix="normlab-streams-"))
    env = service_env(tmp, NORMLAB_DATABASE_URL=f"{args.postgres}/{db}",
                      NORMLAB_BROKER_URL=args.redis)
    subprocess.run([sys.executable, "-m", "app.cli.main", "migrate"], env=env, check=True,
                   capture_output=True)
    worker = api = None
    try:
        worker = start_worker(env, tmp, name="streams")
        api, base = start_api(env, tmp)
        with httpx.Client(base_url=base, timeout=30) as client:
            experiment_id = client.post("/api/v1/experiments", json=ENDLESS).json()["id"]
            wait_status(client, experiment_id, {"running"})
            alone = probe_for(base, args.seconds)
            names = client.get(f"/api/v1/experiments/{experiment_id}/metrics/names").json()
            after = max((n["last_step"] for n in names), default=-1)
            probe = HealthProbe(base)
            seconds: float = args.seconds
            steady: list[float] = []

            def held(streams: Streams) -> bool:
                if not steady:  # every stream is open: measure from now on
                    probe.start()
                    steady.append(time.monotonic())
                return time.monotonic() - steady[0] >= seconds

            try:
                streams = asyncio.run(follow(base, experiment_id, after, args.streams, held))
            finally:
                probe.stop.set()
                if steady:  # started
                    probe.join()
            client.post(f"/api/v1/experiments/{experiment_id}/cancel")
            wait_status(client, experiment_id, {"cancelled"})
    finally:
        for process in (api, worker):
            if process is not None:
                process.stop()
        psql(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)", check=False)

    print(f"machine: {os.cpu_count()} cores; {args.streams} streams, {args.seconds:.0f} s a phase")
    print(line("no stream open", alone))
    print(line(f"{args.streams} streams open", probe))
    ratio = statistics.median(probe.latencies) / statistics.median(alone.latencies)
    print(f"median ratio (streams / none): {ratio:.2f}; all streams open after "
          f"{streams.opened_s:.1f} s; {streams.following} of {args.streams} received new points")


if __name__ == "__main__":
    main()
