"""`normlab serve` with no broker: SQLite, a filesystem queue and its own worker process."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (
    SMALL,
    TERMINAL,
    all_points,
    service_env,
    start_api,
    wait_status,
)
from tests.waiting import HANG_S

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Path]]:
    tmp = tmp_path_factory.mktemp("embedded")
    env = service_env(tmp, NORMLAB_DATABASE_URL=f"sqlite:///{tmp}/normlab.db")
    api, base = start_api(env, tmp)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, tmp
    finally:
        api.stop()


def test_embedded_serve_trains_and_cancels(embedded: tuple[httpx.Client, Path]) -> None:
    client, tmp = embedded
    assert client.get("/api/v1/readyz").status_code == 200
    experiment = client.post("/api/v1/experiments", json={**SMALL, "preset": "geron-bn"}).json()
    done = wait_status(client, experiment["id"], TERMINAL)
    assert done["status"] == "succeeded", (done, (tmp / "api.log").read_text()[-3000:])
    steps = [p["step"] for p in all_points(client, experiment["id"], names="loss")]
    assert steps == list(range(1, done["summary"]["steps"] + 1))
    assert (tmp / "normlab.db").exists()

    long = client.post(
        "/api/v1/experiments", json={**SMALL, "training": {"epochs": 1000, "batch_size": 16}}
    ).json()
    wait_status(client, long["id"], {"running"})
    assert client.post(f"/api/v1/experiments/{long['id']}/cancel").status_code == 202
    assert wait_status(client, long["id"], TERMINAL)["status"] == "cancelled"


def test_embedded_worker_is_a_separate_process(embedded: tuple[httpx.Client, Path]) -> None:
    client, _ = embedded
    experiment = client.post("/api/v1/experiments", json=SMALL).json()
    done = wait_status(client, experiment["id"], TERMINAL)
    assert done["worker"].startswith("embedded-")


def test_cli_submit_watch_and_status(embedded: tuple[httpx.Client, Path], tmp_path: Path) -> None:
    client, _ = embedded
    config = tmp_path / "c.json"
    config.write_text(json.dumps(SMALL))
    base = str(client.base_url)
    cli = [sys.executable, "-m", "app.cli.main"]
    done = subprocess.run(
        [
            *cli,
            "submit",
            str(config),
            "--preset",
            "geron-bn",
            "--tag",
            "cli",
            "--watch",
            "--url",
            base,
        ],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    experiment_id = done.stdout.splitlines()[0].strip()
    assert "succeeded" in done.stdout
    shown = subprocess.run(
        [*cli, "status", experiment_id, "--url", base],
        capture_output=True,
        text=True,
        timeout=HANG_S,
        cwd=ROOT,
    )
    assert shown.returncode == 0 and "final_test_accuracy" in shown.stdout
    assert client.get(f"/api/v1/experiments/{experiment_id}").json()["tags"] == ["cli"]


def test_metrics_sum_every_process(embedded: tuple[httpx.Client, Path]) -> None:
    """Two API processes and the worker's job processes: one scrape counts them all."""
    from prometheus_client.parser import text_string_to_metric_families

    client, _ = embedded
    experiment = client.post("/api/v1/experiments", json=SMALL).json()
    done = wait_status(client, experiment["id"], TERMINAL)
    assert done["status"] == "succeeded"
    for _ in range(20):  # spread over both API processes
        assert client.get("/healthz").status_code == 200
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    written = sum(s.value for s in families["normlab_metric_points_written"].samples
                  if s.name.endswith("_total"))
    assert written >= done["summary"]["steps"]  # every step's loss at least, by the worker
    health = sum(s.value for s in families["normlab_http_requests"].samples
                 if s.name.endswith("_total") and s.labels["route"] == "/healthz")
    assert health >= 20


def test_quiet_by_default_and_a_clean_stop_logs_no_error(tmp_path: Path) -> None:
    """One line per state change, no banner or harmless warnings; SIGTERM to `serve` while a
    job runs hands the job back without an ERROR."""
    import os
    import signal

    env = service_env(tmp_path, NORMLAB_DATABASE_URL=f"sqlite:///{tmp_path}/normlab.db")
    api, base = start_api(env, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            long = client.post("/api/v1/experiments",
                               json={**SMALL, "training": {"epochs": 1000}}).json()
            wait_status(client, long["id"], {"running"})
        os.kill(api.proc.pid, signal.SIGTERM)  # serve alone, as a service manager does
        assert api.proc.wait(timeout=120) == 0
    finally:
        api.stop()
    log = (tmp_path / "api.log").read_text()
    for line in (f"experiment {long['id']} (experiment) queued", f"claimed {long['id']}",
                 f"experiment {long['id']} handed back"):
        assert line in log, log
    for noise in ("ERROR", "Traceback", "SecurityWarning", "No hostname was supplied",
                  "[config]", "Task normlab.run_experiment", '"GET /api/v1', "SQLiteImpl"):
        assert noise not in log, (noise, log)
