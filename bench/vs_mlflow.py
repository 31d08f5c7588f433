"""NormLab vs the MLflow tracking server: the same jobs, one run, one machine, one Postgres.

    python3 -m bench.vs_mlflow [--pg postgresql://postgres@127.0.0.1:5432] [--workers N]
                               [--redis redis://127.0.0.1:6379/15] [--mlflow-workers 2]
                               [--repeats 7] [--poll-seconds 8]

Run from the repository root with the ``bench`` extra (``pip install -e .[bench]``). Creates two
databases on that Postgres, starts ``mlflow server`` (2 workers, its job runner off) on one and
``normlab serve`` with a broker (the distributed mode) on the other, and times side by side:

1. ingest 120,000 points (6 metrics × 20,000 steps): ``runs/log-batch``, 1000 per call, vs the
   worker's metric sink (``worker.sink.MetricSink``) fed 100 steps at a time like the engine;
2. one metric's full history, 20,000 points: ``metrics/get-history`` vs the keyset page walk;
3. a 500-point view of it: MLflow's strided ``get-history-bulk-interval`` vs NormLab's
   spike-keeping ``series?points=500``;
4. 20 and 50 concurrent pollers of the run (``bench.polling``, kept-alive connections):
   ``runs/get`` vs ``GET /experiments/{id}``;

then sends both the same NaN/±Infinity values and prints what each stored. One server is loaded
at a time, and before each workload the script waits until no autovacuum worker runs (the last
workload's writes wake one, which would compete with the next one for the CPUs). Processes,
databases and files are removed at the end, also after an error.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

from app.db.migrate import upgrade
from bench.ingest import new_experiment
from bench.mlflow_rest import ODD, Mlflow, mlflow_nonfinite, same
from bench.polling import PollResult, poll
from worker.sink import MetricSink
from worker.training.metricnames import produced_names
from worker.training.presets import build_config
from worker.training.result import MetricPoint

ROOT = Path(__file__).resolve().parents[1]
STEPS, NAMES = 20_000, 6
# Names a default config records: the API answers only those (others are a 404/422).
METRIC_NAMES = produced_names(build_config({}))[:NAMES]
READ_NAME = METRIC_NAMES[1]


def machine(pg: str) -> list[str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "unknown CPU")
    with psycopg.connect(f"{pg}/postgres") as conn:
        version = conn.execute("SHOW server_version").fetchone()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [f"cpus: {os.cpu_count()} ({cpu}); Postgres {version[0] if version else '?'}; "
            f"load average before: {load}"]


def value(name: int, step: int) -> float:
    return math.exp(-step / 8000) * (1 + name) + 0.01 * math.sin(step * 0.37 + name)


class Stack:
    """Databases and processes of this run, removed in reverse order by ``close``."""

    def __init__(self, pg: str) -> None:
        self.pg, self.tmp = pg, Path(tempfile.mkdtemp(prefix="vs-mlflow-"))
        self.databases: list[str] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def database(self, name: str) -> str:
        with psycopg.connect(f"{self.pg}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        self.databases.append(name)
        return f"{self.pg}/{name}"

    def start(self, name: str, argv: list[str], health: str, env: dict[str, str]) -> None:
        log = (self.tmp / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, cwd=self.tmp, env={**os.environ, **env}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.tmp / name}.log")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health, timeout=2).status_code == 200:
                    return
            time.sleep(0.3)
        raise RuntimeError(f"{name} did not start; see {self.tmp / name}.log")

    def close(self) -> None:
        for process in reversed(self.processes):  # each in its own process group
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        with psycopg.connect(f"{self.pg}/postgres", autocommit=True) as conn:
            for name in reversed(self.databases):
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        shutil.rmtree(self.tmp, ignore_errors=True)


def quiesce(pg: str, limit_s: float = 90.0) -> None:
    """Wait until no autovacuum worker runs (each system's writes wake autovacuum on its own
    database, which then competes with the next workload for the same CPUs), then a second."""
    deadline = time.monotonic() + limit_s
    with psycopg.connect(f"{pg}/postgres", autocommit=True) as conn:
        while time.monotonic() < deadline:
            busy = conn.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE backend_type = 'autovacuum worker'").fetchone()
            if not busy or not busy[0]:
                break
            time.sleep(0.5)
    time.sleep(1.0)


def timed(func: Callable[[], int], repeats: int, expect: int) -> float:
    """Median seconds of ``repeats`` calls after a warm-up; each must return ``expect``."""
    times = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        assert func() == expect
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


class Normlab:
    def __init__(self, base: str, url: str) -> None:
        self.base, self.url = base, url
        self.http = httpx.Client(base_url=base, timeout=300)
        self.config = build_config({"training": {"epochs": 1}}, "geron-bn")

    def ingest(self, points: list[tuple[str, int, float]]) -> tuple[Any, float]:
        """Through the sink, 100 steps per ``put`` as the engine hands them over."""
        lease = new_experiment(self.url, self.config)
        now, per_put = time.time(), 100 * len({k for k, _, _ in points})
        batches = [[MetricPoint(k, s, 1, v, now) for k, s, v in points[i:i + per_put]]
                   for i in range(0, len(points), per_put)]
        sink = MetricSink(self.url, lease)
        started = time.perf_counter()
        for batch in batches:
            sink.put(batch)
        sink.close()
        elapsed = time.perf_counter() - started
        assert sink.points_written == len(points) and sink.error is None
        return lease.experiment_id, elapsed

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(f"/api/v1/experiments/{path}", params=params)
        response.raise_for_status()
        return response.json()

    def walk(self, experiment_id: Any, name: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = -1
        while page := self.get(f"{experiment_id}/metrics", names=name, after_step=after,
                               limit=50_000)["items"]:
            found += page
            after = page[-1]["step"]
        return found

    def series(self, experiment_id: Any, name: str, points: int) -> int:
        return len(self.get(f"{experiment_id}/metrics/{name}/series", points=points)["buckets"])


def nonfinite(mlflow: Mlflow, normlab: Normlab) -> list[str]:
    points = [("loss", step, v) for step, v in enumerate(ODD)]  # a name runs emit
    lines = [f"sent {len(points)} points (steps 0-{len(points) - 1}) with NaN, Infinity and "
             "-Infinity among them, to each in one batch:",
             mlflow_nonfinite(mlflow, points, strings=False),
             mlflow_nonfinite(mlflow, points, strings=True)]
    experiment_id, _ = normlab.ingest(points)
    back = {p["step"]: float(p["value"]) for p in normlab.walk(experiment_id, "loss")}
    lost = sum(not (s in back and same(v, back[s])) for _, s, v in points)
    return [*lines, f"  NormLab (metric sink, read back through the API): stored {len(back)} "
                    f"points {sorted(back.items())}; {lost} of {len(points)} lost or changed"]


def polling_row(label: str, ml: PollResult, nl: PollResult) -> str:
    def cell(r: PollResult) -> str:
        return f"{r.rate:,.0f} req/s, p99 {r.percentile(0.99) * 1e3:.0f} ms, {r.errors} errors"

    return f"| {label} | {cell(ml)} | {cell(nl)} | {nl.rate / ml.rate:.1f}× |"


def run(args: argparse.Namespace, stack: Stack) -> None:
    tag = f"vs_mlflow_{os.getpid()}"
    ml_db, nl_db = stack.database(f"{tag}_mlflow"), stack.database(f"{tag}_normlab")
    nl_url = nl_db.replace("postgresql://", "postgresql+psycopg://")
    print(*machine(args.pg))
    upgrade(nl_url)
    stack.start("mlflow", ["mlflow", "server", "--backend-store-uri", ml_db.replace(
        "postgresql://", "postgresql+psycopg://"), "--default-artifact-root",
        (stack.tmp / "mlartifacts").as_uri(), "--host", "127.0.0.1", "--port",
        str(args.mlflow_port), "--workers", str(args.mlflow_workers)],
        f"http://127.0.0.1:{args.mlflow_port}/health",
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    workers = ["--workers", str(args.workers)] if args.workers else []  # else serve's default
    stack.start("normlab", [sys.executable, "-m", "app.cli.main", "serve", "--port",
                            str(args.port), "--database-url", nl_url, "--broker-url", args.redis,
                            "--data-dir", str(stack.tmp), *workers],
                f"http://127.0.0.1:{args.port}/healthz", {"PYTHONPATH": str(ROOT)})
    mlflow = Mlflow(f"http://127.0.0.1:{args.mlflow_port}")
    normlab = Normlab(f"http://127.0.0.1:{args.port}", nl_url)
    points = [(METRIC_NAMES[n], s, value(n, s)) for s in range(1, STEPS + 1) for n in range(NAMES)]
    rows = ["| workload | MLflow | NormLab | NormLab vs MLflow |", "| --- | ---: | ---: | ---: |"]

    run_id = mlflow.new_run("bench")
    quiesce(args.pg)
    started = time.perf_counter()
    mlflow.log(run_id, points)
    ml_rate = len(points) / (time.perf_counter() - started)
    quiesce(args.pg)
    experiment_id, elapsed = normlab.ingest(points)
    nl_rate = len(points) / elapsed
    rows.append(f"| ingest {len(points):,} points | {ml_rate:,.0f} points/s | "
                f"{nl_rate:,.0f} points/s | {nl_rate / ml_rate:.1f}× |")
    quiesce(args.pg)
    rows += reads(args, mlflow, run_id, normlab, experiment_id)
    for clients in (20, 50):
        ml_poll = poll(f"{mlflow.base}/api/2.0/mlflow/runs/get?run_id={run_id}",
                       clients=clients, seconds=args.poll_seconds)
        nl_poll = poll(f"{normlab.base}/api/v1/experiments/{experiment_id}", clients=clients,
                       seconds=args.poll_seconds)
        rows.append(polling_row(f"{clients} concurrent pollers of one run", ml_poll, nl_poll))
    print("\n".join(["", *rows, "", *nonfinite(mlflow, normlab)]))


def reads(args: argparse.Namespace, mlflow: Mlflow, run_id: str, normlab: Normlab,
          experiment_id: Any) -> list[str]:
    ml_full = timed(lambda: len(mlflow.history(run_id, READ_NAME)), args.repeats, STEPS)
    nl_full = timed(lambda: len(normlab.walk(experiment_id, READ_NAME)), args.repeats, STEPS)
    ml_s = timed(lambda: mlflow.sampled(run_id, READ_NAME, 500), args.repeats * 3, 500)
    nl_s = timed(lambda: normlab.series(experiment_id, READ_NAME, 500), args.repeats * 3, 500)
    return [f"| full history of one metric, {STEPS:,} points (median) | {ml_full * 1e3:,.0f} ms"
            f" | {nl_full * 1e3:,.1f} ms | {ml_full / nl_full:.1f}× |",
            f"| 500-point view (MLflow strided, NormLab min/max buckets; median) | "
            f"{ml_s * 1e3:,.1f} ms | {nl_s * 1e3:,.1f} ms | {ml_s / nl_s:.1f}× |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pg", default="postgresql://postgres@127.0.0.1:5432",
                        help="Postgres server (no database): both databases are made here")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/15")
    parser.add_argument("--workers", type=int, help="NormLab API processes (default: serve's)")
    parser.add_argument("--mlflow-workers", type=int, default=2)
    for flag, kind, default in [("--port", int, 8731), ("--mlflow-port", int, 5731),
                                ("--repeats", int, 7), ("--poll-seconds", float, 8.0)]:
        parser.add_argument(flag, type=kind, default=default)
    args = parser.parse_args()
    stack = Stack(args.pg)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # still clean up
    try:
        run(args, stack)
    finally:
        stack.close()


if __name__ == "__main__":
    main()
