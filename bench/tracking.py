"""What tracking costs the engine: the same config trained by a real worker (Celery job process,
metric sink into Postgres) and by `normlab train` (no database), side by side, alternating.

The figure is the step span, from the first step's point to the last one's by the points' own
wall times: the engine's speed, without process start-up and data loading (the CLI pays ~0.85 s
of warm-up that the worker's forked job process does not, which ``summary.duration_s`` hides).
Both sides train with the same number of torch threads (``NORMLAB_TORCH_THREADS`` for the
worker, ``--threads`` for the CLI): by default a worker job's, every core but one.
``bench/ingest.py --tracking-cost`` prints it for the worst case and the geron-bn-shaped net.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from app.core.config import Settings
from app.db import experiments
from app.db.models import MetricPoint
from app.db.session import session_scope
from app.dispatch import CeleryDispatcher
from worker.training.config import ExperimentConfig
from worker.training.device import job_threads
from worker.training.presets import build_config

ROOT = Path(__file__).resolve().parents[1]
CASES: dict[str, dict[str, Any]] = {
    # Every step logged at batch 1 on a tiny net: the most points per second of training.
    "digits 64-16-10 ReLU, batch 1, every step logged": {
        "dataset": {"name": "digits"},
        "model": {"hidden_layers": [64, 16], "activation": "relu",
                  "batch_norm": {"enabled": False}},
        "training": {"epochs": 4, "batch_size": 1, "log_every_steps": 1},
        "resources": {"device": "cpu"},
    },
    # The geron-bn preset itself (784-300-100-10 ELU, BN, batch 50) on the MNIST images that
    # work offline, every step logged. (Spans of 1-3 s: at 0.3 s, as on digits, the run-to-run
    # noise of this VM was larger than the 5% to measure.)
    "geron-bn on mnist_5k, batch 50, every step logged": {
        "preset": "geron-bn", "dataset": {"name": "mnist_5k"},
        "training": {"epochs": 10, "batch_size": 50, "log_every_steps": 1},
        "resources": {"device": "cpu"},
    },
}


def config_of(case: dict[str, Any]) -> ExperimentConfig:
    raw = {k: v for k, v in case.items() if k != "preset"}
    return build_config(raw, case.get("preset"))


def cli_span(config: ExperimentConfig, folder: Path, threads: int) -> float:
    path, out = folder / "config.json", folder / "out.json"
    path.write_text(config.model_dump_json())
    subprocess.run([sys.executable, "-m", "app.cli.main", "train", str(path), "--out", str(out),
                    "--threads", str(threads)], check=True, capture_output=True, cwd=ROOT)
    walls = [p["wall_time"] for p in json.loads(out.read_text())["metrics"] if p["name"] == "loss"]
    return float(max(walls) - min(walls))


class Worker:
    """A real `celery worker` process (one job process per experiment, as deployed), on a
    filesystem queue of its own and the given database; its reconciler stays off."""

    def __init__(self, database_url: str, folder: Path, threads: int) -> None:
        self.settings = Settings(database_url=database_url, data_dir=folder / "data",
                                 artifacts_dir=folder / "artifacts")
        env = {**os.environ, "NORMLAB_DATABASE_URL": database_url,
               "NORMLAB_DATA_DIR": str(folder / "data"),
               "NORMLAB_ARTIFACTS_DIR": str(folder / "artifacts"),
               "NORMLAB_RECONCILE_IN_WORKER": "false", "PYTHONPATH": str(ROOT),
               "NORMLAB_TORCH_THREADS": str(threads)}
        env.pop("NORMLAB_BROKER_URL", None)
        self.log = (folder / "worker.log").open("wb")
        self.dispatcher = CeleryDispatcher(self.settings)  # creates the queue folders
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "worker", "--queues", "cpu",
             "--name", f"bench-{os.getpid()}"], env=env, stdout=self.log,
            stderr=subprocess.STDOUT, cwd=folder)
        # Its start-up takes CPU: the first CLI run must not share the machine with it.
        while b" ready." not in (folder / "worker.log").read_bytes():
            if self.process.poll() is not None:
                raise RuntimeError("the worker exited")
            time.sleep(0.2)

    def span(self, config: ExperimentConfig) -> float:
        url = self.settings.database_url
        with session_scope(url) as session:
            row, _ = experiments.create(session, config=config.model_dump(mode="json"),
                                        tags=["bench"])
        experiment_id: uuid.UUID = row.id
        self.dispatcher.send(experiment_id, "cpu")
        while True:
            with session_scope(url) as session:
                status = experiments.status_of(session, experiment_id)
                if status in experiments.FINISHED:
                    low, high = session.execute(
                        select(func.min(MetricPoint.wall_time), func.max(MetricPoint.wall_time))
                        .where(MetricPoint.experiment_id == experiment_id,
                               MetricPoint.name == "loss")).one()
                    experiments.delete_finished(session, experiment_id)
                    break
            if self.process.poll() is not None:
                raise RuntimeError("the worker exited")
            time.sleep(0.2)
        if status != "succeeded":
            raise RuntimeError(f"worker run {status}")
        return float(high - low)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


@dataclass
class Cost:
    """One case's alternating runs: step spans (s) and the 1-minute load average after each pair."""

    case: str
    threads: int
    cli: list[float]
    worker: list[float]
    load: list[float]

    @property
    def pairs(self) -> list[float]:
        """Each pair's worker / CLI − 1: the spread says how far to trust the medians."""
        return [w / c - 1 for c, w in zip(self.cli, self.worker, strict=True)]

    def report(self) -> str:
        cli, work = statistics.median(self.cli), statistics.median(self.worker)
        pairs = ", ".join(f"{r:+.1%}" for r in self.pairs)
        return (f"{self.case}: step span `normlab train` {cli:.2f} s, worker {work:.2f} s "
                f"(medians of {len(self.cli)}, {self.threads} torch thread(s) each): "
                f"tracking costs {work / cli - 1:+.1%}; "
                f"pairs {pairs} (median {statistics.median(self.pairs):+.1%}); "
                f"load average {min(self.load):.1f}-{max(self.load):.1f} on {os.cpu_count()} CPUs")


def tracking_cost(database_url: str, repeats: int = 3, threads: int | None = None) -> list[Cost]:
    """Each case trained ``repeats`` times by each side, alternating (so drift hits both alike)."""
    threads = job_threads(threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="normlab-bench-") as tmp:
        worker = Worker(database_url, Path(tmp), threads)
        try:
            for name, case in CASES.items():
                config = config_of(case)
                cost = Cost(name, threads, [], [], [])
                for i in range(repeats):
                    # Which side goes first alternates too: a load swing favours neither.
                    if i % 2:
                        cost.worker.append(worker.span(config))
                        cost.cli.append(cli_span(config, Path(tmp), threads))
                    else:
                        cost.cli.append(cli_span(config, Path(tmp), threads))
                        cost.worker.append(worker.span(config))
                    cost.load.append(os.getloadavg()[0])
                    print(f"  {name}: cli {cost.cli[-1]:.2f} s, worker {cost.worker[-1]:.2f} s "
                          f"({cost.pairs[-1]:+.1%}), load {cost.load[-1]:.1f}", flush=True)
                results.append(cost)
        finally:
            worker.stop()
    return results
