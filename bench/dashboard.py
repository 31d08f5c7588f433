"""The dashboard in headless Chromium: time to the first chart of a 1,000,000-point metric, a
20-run compare of 10,000-step runs, and how many points each chart downloads per pixel.

    python3 bench/dashboard.py [DATABASE_URL] [--points 1000000] [--runs 20] [--steps 10000]
                               [--repeats 5] [--broker redis://127.0.0.1:6379/0]

Writes the experiments through app.db (as the worker's sink does), starts `normlab serve` (its
default two API processes; a broker URL is given only so that no embedded worker starts: nothing
is submitted) and opens the pages in /usr/bin/chromium, a fresh browser context (cold
cache) per repeat. Times are the page's own clock (performance.now(), from navigation start).
Side by side: the same browser walking the 1,000,000 raw points through metric pages, what a
dashboard without the series endpoint would have to download. The experiments are deleted at
the end.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

from app.db import experiments, lifecycle, metrics
from app.db.migrate import upgrade
from app.db.session import session_scope
from worker.training.config import ExperimentConfig
from worker.training.result import MetricPoint, TrainSummary

DEFAULT_URL = os.environ.get("NORMLAB_BENCH_URL",
                             "postgresql+psycopg://postgres@127.0.0.1/normlab_bench")
CHROMIUM = "/usr/bin/chromium"
CHUNK = 50_000
RAW_WALK = """async () => {
  const t0 = performance.now(); let after = -1; let n = 0;
  for (;;) {
    const r = await fetch(
      `/api/v1/experiments/ID/metrics?names=loss&after_step=${after}&limit=50000`);
    const page = await r.json();
    if (!page.items.length) break;
    n += page.items.length; after = page.next_after_step;
  }
  return [performance.now() - t0, n];
}"""


# Where the time goes: the page shell (HTML and scripts, until the first API request), then the
# chart data requests (series, compare) from the first request's start to the last answer.
PHASES = """(() => {
  const api = performance.getEntriesByType("resource").filter((e) => e.name.includes("/api/v1/"));
  const data = api.filter((e) => e.name.includes("/series") || e.name.includes("/compare?"));
  return [Math.min(...api.map((e) => e.startTime)), Math.min(...data.map((e) => e.startTime)),
          Math.max(...data.map((e) => e.responseEnd))];
})()"""
phases: list[list[float]] = []


def run(url: str, name: str, lr: float, series: dict[str, tuple[int, int]]) -> uuid.UUID:
    """A finished experiment with ``series[name] = (points, every)`` written through app.db."""
    config = ExperimentConfig.model_validate({"name": name, "optimizer": {"learning_rate": lr}})
    with session_scope(url) as session:
        row, _ = experiments.create(session, config=config.model_dump(mode="json"), tags=["bench"])
        lease = lifecycle.claim(session, row.id, worker="bench")
        assert lease is not None
    steps = max(n * every for n, every in series.values())
    for metric, (n, every) in series.items():
        for start in range(0, n, CHUNK):
            points = [
                MetricPoint(metric, (i + 1) * every, 1,
                            math.nan if i == n * 7 // 9 else  # one NaN, as a diverging step
                            (1 + math.sin(i / 5000)) * math.exp(-i / n) + (i % 97) / 9700, 0.0)
                for i in range(start, min(n, start + CHUNK))
            ]
            with session_scope(url) as session:
                metrics.insert_points(session, row.id, points)
                session.commit()
    with session_scope(url) as session:
        summary = TrainSummary(status="succeeded", steps=steps, final_loss=0.5,
                               final_test_accuracy=0.9)
        lifecycle.finish(session, lease, status="succeeded",
                         summary=summary.model_dump(mode="json"))
        session.commit()
    return row.id


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(browser: Browser, address: str, ready: str, clock: str) -> tuple[float, Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.goto(address)
    page.wait_for_selector(ready, timeout=120_000)
    result = page.evaluate(f"[window.normlab.{clock}, window.normlab.charts]")
    phases.append(page.evaluate(PHASES))
    context.close()
    return float(result[0]), result[1]


def charts_points(charts: dict[str, Any]) -> int:
    return int(charts["loss"]["points"])


def per_pixel(charts: dict[str, Any]) -> float:
    """Most points any chart downloaded, per pixel of its width."""
    worst = 0.0
    for chart in charts.values():
        data = chart["data"]
        columns = data.values() if isinstance(data, dict) else data
        worst = max(worst, max(len(c["x"]) for c in columns) / chart["width"])
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url", nargs="?", default=DEFAULT_URL)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    upgrade(args.url)
    big = run(args.url, "bench-1m", 0.01, {"loss": (args.points, 1)})
    many = [run(args.url, f"bench-{k}", 0.01 * (k + 1),
                {"loss": (args.steps, 1), "test_accuracy": (args.steps // 100, 100)})
            for k in range(args.runs)]
    port = free_port()
    env = {**os.environ, "NORMLAB_DATABASE_URL": args.url, "NORMLAB_BROKER_URL": args.broker}
    server = subprocess.Popen([sys.executable, "-m", "app.cli.main", "serve", "--port", str(port),
                               "--no-access-log"], env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM)
            first, compare, ratios = [], [], []
            first_phases: list[list[float]] = []
            charts_first: dict[str, Any] = {}
            for _ in range(args.repeats):
                ms, charts = timed(browser, f"{base}/#/e/{big}", '.chart:not([data-loads="0"])',
                                   "firstChartMs")
                first.append(ms)
                first_phases.append([*phases[-1], ms])
                charts_first = charts
                ratios.append(per_pixel(charts))
                ids = ",".join(str(i) for i in many)
                ms, charts = timed(browser, f"{base}/#/compare?ids={ids}&names=loss,test_accuracy",
                                   "#app[data-ready=true] .compare .chart:not([data-loads='0'])",
                                   "compareDrawnMs")
                compare.append(ms)
                ratios.append(per_pixel(charts))
            # The same series request alone (httpx, no browser), side by side.
            points = charts_points(charts_first)
            bare = []
            for _ in range(args.repeats):
                started = time.perf_counter()
                httpx.get(f"{base}/api/v1/experiments/{big}/metrics/loss/series",
                          params={"points": points}, timeout=60).raise_for_status()
                bare.append((time.perf_counter() - started) * 1000)
            context = browser.new_context()
            page = context.new_page()
            page.goto(f"{base}/#/")
            raw_ms, raw_n = page.evaluate(RAW_WALK.replace("ID", str(big)))
            context.close()
            browser.close()
    finally:
        server.terminate()
        server.wait()
        with session_scope(args.url) as session:
            for experiment_id in [big, *many]:
                experiments.delete_finished(session, experiment_id)
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    print(f"experiment page, {args.points:,}-point metric, first chart: median "
          f"{statistics.median(first):.0f} ms (runs: {', '.join(f'{x:.0f}' for x in first)})")
    shell, start, end, total = (statistics.median(p[i] for p in first_phases) for i in range(4))
    print(f"  medians: page shell {shell:.0f} ms; the series request from {start:.0f} to "
          f"{end:.0f} ms; chart drawn at {total:.0f} ms")
    print(f"  the series request alone (httpx, {points} buckets): median "
          f"{statistics.median(bare):.0f} ms")
    print(f"  the same metric's raw points walked through metric pages: {raw_ms:.0f} ms for "
          f"{raw_n:,} points ({raw_ms / statistics.median(first):.0f}× the first chart)")
    print(f"compare, {args.runs} runs × {args.steps:,} steps, 2 metrics drawn: median "
          f"{statistics.median(compare):.0f} ms (runs: {', '.join(f'{x:.0f}' for x in compare)})")
    print(f"points downloaded per chart, per pixel of its width: at most {max(ratios):.2f}")


if __name__ == "__main__":
    main()
