"""Downsampled series vs. the full metric walk: one metric of 1,000,000 points in Postgres.

    python3 bench/series.py [DATABASE_URL] [--points 1000000] [--repeats 20] [--index-only-ab]
                            [--other-metrics K]

Migrates the database (default postgresql+psycopg://postgres@127.0.0.1/normlab_bench), writes
one experiment's ``loss`` series with generate_series (a planted spike, NaNs and an infinity
included), VACUUM ANALYZEs it as autovacuum would, then times through the API (in process,
FastAPI TestClient) ``GET .../metrics/loss/series?points=1000`` (median of ``--repeats``) and
the full keyset page walk ``GET .../metrics?limit=10000`` until empty, side by side. The
experiment is deleted at the end. ``--index-only-ab`` also times the database part alternately
with index-only scans allowed and forbidden: what the covering primary key of migration 0003
(``INCLUDE (value, kind)``) buys, measured in the same minute.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import uuid
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import text

from app.core.config import Settings
from app.db import experiments, series
from app.db.metric_store import postgres_rollups as rollups
from app.db.migrate import upgrade
from app.db.session import engine_for, session_scope
from app.dispatch import Dispatcher
from app.main import create_app

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1/normlab_bench"
NAME = "loss"
SPIKE_VALUE = 1e6  # planted at 7/9 of the series: every bucket size must keep it

FILL = """
INSERT INTO metric_points (experiment_id, name, step, epoch, value, kind, wall_time)
SELECT :experiment_id, m.name, s, s / 1000 + 1,
       CASE WHEN s = :spike THEN :spike_value
            WHEN s % 100003 = 0 OR s = :infinity THEN NULL
            ELSE (1.0 + sin(s / 5000.0)) * exp(-s / 400000.0) + (random() - 0.5) * 0.05 END,
       CASE WHEN s = :infinity THEN 2 WHEN s % 100003 = 0 THEN 1 ELSE 0 END,
       1.7e9 + s * 0.002
FROM generate_series(1, :n) AS s CROSS JOIN unnest(CAST(:names AS text[])) AS m(name)
ORDER BY s, m.name
"""


class NoDispatcher:
    """The benchmark submits nothing: no broker needed."""

    def send(self, experiment_id: uuid.UUID, queue: str) -> None:
        raise RuntimeError("not used")

    def ping(self) -> None:
        pass


def machine(url: str) -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    with engine_for(url).connect() as connection:
        version = str(connection.execute(text("SHOW server_version")).scalar())
        workers = str(connection.execute(text("SHOW max_parallel_workers_per_gather")).scalar())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "cpus": str(os.cpu_count()),
        "cpu": cpu,
        "postgres": version,
        "max_parallel_workers_per_gather": workers,
        "load average before": load,
    }


def fill(url: str, n: int, others: int = 0) -> uuid.UUID:
    """``n`` steps of the benchmarked metric, and of ``others`` more metrics interleaved with it
    step by step, the way the worker writes a run (all of a step's metrics at once)."""
    with session_scope(url) as session:
        row, _ = experiments.create(session, config={"name": "bench-series"}, tags=["bench"])
        experiment_id = row.id
    with engine_for(url).begin() as connection:
        connection.execute(text("SELECT setseed(0.42)"))
        connection.execute(
            text(FILL),
            {
                "experiment_id": experiment_id,
                "names": [NAME, *(f"other_{k}" for k in range(others))],
                "n": n,
                "spike": n * 7 // 9,
                "spike_value": SPIKE_VALUE,
                "infinity": n - 1,
            },
        )
        # The series blocks, as the worker's write path keeps them (metric_store.postgres_rollups).
        with connection.connection.driver_connection.cursor() as cursor:  # type: ignore[union-attr]
            rollups.rebuild(cursor, experiment_id, 0)
    with engine_for(url).connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT").execute(
            text("VACUUM ANALYZE metric_points")
        )
        connection.execute(text("VACUUM ANALYZE metric_rollups"))
    return experiment_id


def drop(url: str, experiment_id: uuid.UUID) -> None:
    with engine_for(url).begin() as connection:
        params = {"id": experiment_id}
        connection.execute(text("DELETE FROM metric_points WHERE experiment_id = :id"), params)
        connection.execute(text("DELETE FROM metric_rollups WHERE experiment_id = :id"), params)
        connection.execute(text("DELETE FROM experiment_tags WHERE experiment_id = :id"), params)
        connection.execute(text("DELETE FROM experiments WHERE id = :id"), params)


def timed(func: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    func()  # warm-up: connections, caches, query plans
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - started)
    return times, result


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def walk(client: TestClient, experiment_id: uuid.UUID) -> int:
    """Every point of the metric, page after page, the way a poller downloads a run."""
    count, after = 0, -1
    while True:
        response = client.get(
            f"/api/v1/experiments/{experiment_id}/metrics",
            params={"names": NAME, "after_step": after, "limit": 10_000},
        )
        assert response.status_code == 200, response.text
        page = response.json()
        if not page["items"]:
            return count
        count += len(page["items"])
        after = page["next_after_step"]


def bench_series(
    client: TestClient, url: str, experiment_id: uuid.UUID, n: int, points: int, repeats: int
) -> list[float]:
    path = f"/api/v1/experiments/{experiment_id}/metrics/{NAME}/series"

    def get() -> dict[str, Any]:
        response = client.get(path, params={"points": points})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    times, body = timed(get, repeats)
    buckets = body["buckets"]
    assert len(buckets) == points and not body["raw"]
    assert sum(b["count"] for b in buckets) == n
    assert max(b["max"] for b in buckets) == SPIKE_VALUE  # the spike survives
    assert sum(b["nonfinite_count"] for b in buckets) == n // 100003 + 1
    return times


def sql_only(url: str, experiment_id: uuid.UUID, points: int, repeats: int) -> list[float]:
    def run() -> int:
        with session_scope(url) as session:
            return len(series.series(session, experiment_id, NAME, points=points))

    return timed(run, repeats)[0]


def paired(
    url: str, experiment_id: uuid.UUID, points: int, repeats: int
) -> tuple[list[float], list[float]]:
    """The same query alternately with and without index-only scans (the covering key's whole
    point), so that load from other processes hits both sides alike."""
    times: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(repeats + 1):
        for setting in ("on", "off"):
            with session_scope(url) as session:
                session.execute(text(f"SET LOCAL enable_indexonlyscan = {setting}"))
                started = time.perf_counter()
                series.series(session, experiment_id, NAME, points=points)
                times[setting].append(time.perf_counter() - started)
    return times["on"][1:], times["off"][1:]  # the first pair warms up


def summary(times: list[float]) -> str:
    return (
        f"median {ms(statistics.median(times))}  (min {ms(min(times))}, "
        f"max {ms(max(times))}, n={len(times)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("database_url", nargs="?", default=DEFAULT_URL)
    parser.add_argument("--points", type=int, default=1_000_000, help="points in the series")
    parser.add_argument("--buckets", type=int, default=1000, help="series?points=")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--walks", type=int, default=3, help="full page walks to time")
    parser.add_argument(
        "--other-metrics",
        type=int,
        default=0,
        help="more metrics of as many points, interleaved step by step as a real run writes "
        "them (the table's pages then hold every metric: reads of one need more pages)",
    )
    parser.add_argument(
        "--index-only-ab",
        action="store_true",
        help="also time app.db.series alternately with index-only scans allowed and forbidden",
    )
    args = parser.parse_args()
    url = args.database_url

    with warnings.catch_warnings():  # "use httpx2": irrelevant to a benchmark
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    upgrade(url)
    for key, value in machine(url).items():
        print(f"{key}: {value}")
    started = time.perf_counter()
    experiment_id = fill(url, args.points, args.other_metrics)
    total = args.points * (1 + args.other_metrics)
    print(
        f"wrote {total:,} points ({1 + args.other_metrics} metric(s), step by step) in "
        f"{time.perf_counter() - started:.1f} s (incl. VACUUM); timed: {args.points:,} of {NAME}"
    )
    dispatcher: Dispatcher = NoDispatcher()
    app = create_app(Settings(database_url=url), dispatcher)
    try:
        with TestClient(app) as client:
            series_times = bench_series(
                client, url, experiment_id, args.points, args.buckets, args.repeats
            )
            sql_times = sql_only(url, experiment_id, args.buckets, args.repeats)
            walk_times, count = timed(lambda: walk(client, experiment_id), args.walks)
            assert count == args.points, count
            print(f"series?points={args.buckets} via API: {summary(series_times)}")
            print(f"  of which app.db.series alone: {summary(sql_times)}")
            print(
                f"full page walk (limit 10000, {-(-args.points // 10_000)} pages): "
                f"{summary(walk_times)}"
            )
            ratio = statistics.median(walk_times) / statistics.median(series_times)
            print(f"walk / series: {ratio:,.0f}x")
            if args.index_only_ab:
                on, off = paired(url, experiment_id, args.buckets, args.repeats)
                on_ms, off_ms = ms(statistics.median(on)), ms(statistics.median(off))
                print(f"  app.db.series, index-only scans allowed / forbidden: {on_ms} / {off_ms}")
    finally:
        drop(url, experiment_id)


if __name__ == "__main__":
    main()
