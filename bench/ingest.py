"""Metric ingest: points/s the worker's sink writes into Postgres, and what the sink costs training.

    python3 bench/ingest.py --database-url postgresql+psycopg://postgres@127.0.0.1/normlab_bench
    python3 bench/ingest.py --database-url ... --tracking-cost   # worker vs `normlab train`
    python3 bench/ingest.py --database-url ... --write-cpu       # CPU µs a point, off training

Creates (and drops) its experiments in that database; migrates it first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.* from a plain run

from sqlalchemy import text

from app.db import experiments, lifecycle
from app.db.lifecycle import Lease
from app.db.migrate import upgrade
from app.db.session import session_scope
from worker import sink as metric_sink
from worker.sink import MetricSink
from worker.training.config import ExperimentConfig
from worker.training.datasets import load_dataset
from worker.training.loop import train
from worker.training.presets import build_config
from worker.training.result import MetricPoint


def new_experiment(url: str, config: ExperimentConfig) -> Lease:
    with session_scope(url) as session:
        row, _ = experiments.create(session, config=config.model_dump(mode="json"), tags=["bench"])
        lease = lifecycle.claim(session, row.id, worker="bench")
    assert lease is not None
    return lease


def drop(url: str, lease: Lease) -> None:
    with session_scope(url) as session:
        lifecycle.finish(session, lease, status="succeeded")
        session.commit()
        experiments.delete_finished(session, lease.experiment_id)


def bench_ingest(url: str, config: ExperimentConfig, steps: int, names: int) -> float:
    """Feed steps × names points the way the engine does (one call per 100 steps)."""
    lease = new_experiment(url, config)
    now = time.time()
    batches = [
        [
            MetricPoint(f"metric_{n}", s, 1, float(s * n), now)
            for s in range(b, b + 100)
            for n in range(names)
        ]
        for b in range(1, steps + 1, 100)
    ]
    sink = MetricSink(url, lease, flush_every_s=1.0)
    started = time.perf_counter()
    for batch in batches:
        sink.put(batch)
    sink.close()
    elapsed = time.perf_counter() - started
    assert sink.points_written == steps * names, sink.points_written
    drop(url, lease)
    return steps * names / elapsed


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (/proc/<pid>/stat), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backends(url: str) -> set[int]:
    """The client backends of the database (the bench's own pool included)."""
    with session_scope(url) as session:
        return set(session.scalars(text(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND backend_type = 'client backend'")))


def bench_write_cpu(url: str, config: ExperimentConfig, steps: int, names: int,
                    rate: float, per_put: int) -> tuple[float, float, float]:
    """CPU time a point costs outside training: the writer process's and its Postgres backend's
    (µs a point), and the wall seconds. Points come ``per_put`` steps (of ``names`` points) at
    a time at ``rate`` steps/s, as a training loop logging every step sends them (the engine
    flushes at every epoch end, every 1,024 steps and every second): the writer's batches are
    then as large as a real run's. CPU time, unlike wall time, holds under load."""
    lease = new_experiment(url, config)
    before = backends(url)
    sink = MetricSink(url, lease, flush_every_s=1.0)
    now = time.time()
    sink.put([MetricPoint(f"metric_{n}", 0, 1, 0.0, now) for n in range(names)])
    sink.wait_written()  # the writer's connection is open: its backend can be found
    (backend,) = backends(url) - before
    writer_cpu, backend_cpu = cpu_seconds(sink._writer_pid), cpu_seconds(backend)
    started = time.perf_counter()
    for first in range(1, steps + 1, per_put):
        last = min(first + per_put, steps + 1)
        sink.put([MetricPoint(f"metric_{n}", s, 1, float(s * n) / 7, now + s / rate)
                  for s in range(first, last) for n in range(names)])
        pause = started + last / rate - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
    sink.wait_written()
    elapsed = time.perf_counter() - started
    writer_cpu = cpu_seconds(sink._writer_pid) - writer_cpu
    backend_cpu = cpu_seconds(backend) - backend_cpu
    sink.close()
    assert sink.points_written == (steps + 1) * names, sink.points_written
    drop(url, lease)
    points = steps * names
    return writer_cpu / points * 1e6, backend_cpu / points * 1e6, elapsed


def bench_training(url: str, config: ExperimentConfig, repeats: int) -> tuple[float, float]:
    data = load_dataset(config.dataset, seed=config.training.seed)
    device = torch.device("cpu")
    alone, with_sink = [], []
    train(config, data, device=device, on_metrics=lambda _: None)  # warm-up
    for _ in range(repeats):  # alternate, so drift hits both sides alike
        started = time.perf_counter()
        train(config, data, device=device, on_metrics=lambda _: None)
        alone.append(time.perf_counter() - started)

        lease = new_experiment(url, config)
        sink = MetricSink(url, lease, flush_every_s=1.0)
        started = time.perf_counter()
        train(config, data, device=device, on_metrics=sink.put, should_stop=sink.should_stop)
        with_sink.append(time.perf_counter() - started)
        sink.close()
        drop(url, lease)
    return statistics.median(alone), statistics.median(with_sink)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--names", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3,
                        help="Runs per side (--tracking-cost: alternating pairs per case)")
    parser.add_argument("--tracking-cost", action="store_true",
                        help="What tracking costs the engine (bench/tracking.py), then exit")
    parser.add_argument("--threads", type=int, default=None,
                        help="--tracking-cost: torch threads on both sides (default: a worker "
                             "job's, every core but one)")
    parser.add_argument("--write-cpu", action="store_true",
                        help="CPU µs a point of the writer process and its backend, then exit")
    parser.add_argument("--rate", type=float, default=1000.0,
                        help="--write-cpu: steps a second put into the sink")
    parser.add_argument("--steps-per-put", type=int, default=1,
                        help="--write-cpu: steps a put holds (the engine's flushes)")
    parser.add_argument("--send-every", type=float, default=metric_sink.SEND_EVERY_S,
                        help="--write-cpu: the sink's SEND_EVERY_S (seconds between writes)")
    args = parser.parse_args()
    upgrade(args.database_url)
    if args.tracking_cost:
        from bench.tracking import tracking_cost

        for cost in tracking_cost(args.database_url, args.repeats, args.threads):
            print(cost.report())
        return
    config = build_config(
        {
            "dataset": {"name": "synthetic", "synthetic": {"samples": 12_000}},
            "training": {"epochs": 8, "batch_size": 50},
            "resources": {"device": "cpu"},
        },
        "geron-bn",
    )

    if args.write_cpu:
        metric_sink.SEND_EVERY_S = args.send_every
        runs = [bench_write_cpu(args.database_url, config, args.steps, args.names, args.rate,
                                args.steps_per_put) for _ in range(args.repeats)]
        for writer, backend, elapsed in runs:
            print(f"  writer {writer:.2f} µs/point, backend {backend:.2f} µs/point "
                  f"({elapsed:.1f} s)")
        writer = statistics.median(r[0] for r in runs)
        backend = statistics.median(r[1] for r in runs)
        print(f"write CPU ({args.steps * args.names:,} points, {args.names} a step, "
              f"{args.rate:g} steps/s, {args.steps_per_put} a put, a write every "
              f"{args.send_every:g} s; medians of {args.repeats}): writer {writer:.2f} µs/point, "
              f"backend {backend:.2f} µs/point, together {writer + backend:.2f}; "
              f"load average {os.getloadavg()[0]:.1f}")
        return

    rate = bench_ingest(args.database_url, config, args.steps, args.names)
    print(f"sink ingest: {args.steps * args.names:,} points at {rate:,.0f} points/s")
    alone, with_sink = bench_training(args.database_url, config, args.repeats)
    print(f"training alone:     {alone:.2f} s (median of {args.repeats})")
    print(f"training with sink: {with_sink:.2f} s")
    print(f"sink overhead: {(with_sink / alone - 1) * 100:+.1f}%  (ratio {with_sink / alone:.3f})")


if __name__ == "__main__":
    main()
