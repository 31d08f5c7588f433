"""The distributed stack for real: HTTP → Postgres → Redis → celery worker process → Postgres."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

from tests.integration.conftest import (
    SMALL,
    TERMINAL,
    all_points,
    free_port,
    service_env,
    start_worker,
    wait_status,
)
from tests.waiting import HANG_S, wait_until

ROOT = Path(__file__).resolve().parents[2]


def submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/api/v1/experiments", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def test_experiment_trains_to_success_with_every_step_once(distributed: httpx.Client) -> None:
    experiment = submit(distributed, {**SMALL, "preset": "geron-bn", "tags": ["it"],
                                      "name": "../../x/bob-run"})
    done = wait_status(distributed, experiment["id"], TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["worker"] and done["device"] == "cpu"
    summary = done["summary"]
    assert summary["final_test_accuracy"] > 0.8
    steps = summary["steps"]
    loss_steps = [p["step"] for p in all_points(distributed, experiment["id"], names="loss")]
    assert loss_steps == list(range(1, steps + 1))
    test_acc = all_points(distributed, experiment["id"], names="test_accuracy")
    assert [p["epoch"] for p in test_acc] == [1, 2, 3]
    names = {
        n["name"]
        for n in distributed.get(f"/api/v1/experiments/{experiment['id']}/metrics/names").json()
    }
    assert {"grad_norm", "clip_fraction", "bn/hidden1/running_var_mean"} <= names
    checkpoint = distributed.get(f"/api/v1/experiments/{experiment['id']}/checkpoint")
    assert checkpoint.status_code == 200 and len(checkpoint.content) > 1000
    assert checkpoint.headers["content-disposition"] == (
        f'attachment; filename="x_bob-run-{experiment["id"]}.safetensors"')


def test_diverging_experiment_keeps_its_points(distributed: httpx.Client) -> None:
    body = {
        **SMALL,
        "optimizer": {"learning_rate": 10.0},
        "model": {"hidden_layers": [64, 32], "batch_norm": {"enabled": False}},
    }
    experiment = submit(distributed, body)
    done = wait_status(distributed, experiment["id"], TERMINAL)
    assert done["status"] == "diverged", done
    bad_step = done["summary"]["diverged_at_step"]
    points = all_points(distributed, experiment["id"], names="loss,grad_norm")
    assert max(p["step"] for p in points) == bad_step
    last = [p for p in points if p["step"] == bad_step]
    assert any(p["value"] in ("NaN", "Infinity", "-Infinity") for p in last)


def test_cancel_running_experiment(distributed: httpx.Client) -> None:
    body = {**SMALL, "training": {"epochs": 1000, "batch_size": 16}}
    experiment = submit(distributed, body)
    wait_status(distributed, experiment["id"], {"running"})
    wait_until(lambda: all_points(distributed, experiment["id"], names="loss"), "training steps")
    response = distributed.post(f"/api/v1/experiments/{experiment['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] in ("cancelling", "cancelled")
    done = wait_status(distributed, experiment["id"], TERMINAL)  # 1000 epochs: only if cancelled
    assert done["status"] == "cancelled"
    assert distributed.post(f"/api/v1/experiments/{experiment['id']}/cancel").status_code == 409


def test_polling_while_training_never_misses_or_repeats(distributed: httpx.Client) -> None:
    body = {**SMALL, "training": {"epochs": 6, "batch_size": 16}}
    experiment = submit(distributed, body)
    path = f"/api/v1/experiments/{experiment['id']}"
    seen: list[tuple[str, int]] = []
    after = -1
    while True:
        status = distributed.get(path).json()["status"]
        page = distributed.get(f"{path}/metrics", params={"after_step": after, "limit": 37}).json()
        seen += [(p["name"], p["step"]) for p in page["items"]]
        after = page["next_after_step"]  # sent back unchanged, caught up or not
        # The status was read before the page: terminal then and nothing new now means done.
        if not page["items"] and not page["has_more"] and status in TERMINAL:
            break
    assert len(seen) == len(set(seen)), "a point was repeated"
    final = all_points(distributed, experiment["id"])
    assert sorted(seen) == sorted((p["name"], p["step"]) for p in final), "a point was missed"
    assert distributed.get(path).json()["status"] == "succeeded"


def test_api_refuses_an_unmigrated_postgres(postgres_url: str, tmp_path: Path) -> None:
    base, _, _ = postgres_url.rpartition("/")
    name = f"normlab_empty_{uuid.uuid4().hex[:8]}"
    admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    try:
        env = service_env(
            tmp_path,
            NORMLAB_DATABASE_URL=f"{base}/{name}",
            NORMLAB_BROKER_URL="redis://127.0.0.1:6379/14",
        )
        done = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "serve", "--port", "1"],
            env=env,
            capture_output=True,
            text=True,
            timeout=HANG_S,
            cwd=ROOT,
        )
        assert done.returncode == 2
        assert "normlab migrate" in done.stderr
    finally:
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def test_raw_header_bytes_get_an_answer_not_a_500(distributed: httpx.Client) -> None:
    """Through the real server (uvicorn's parser): the byte B2 is "²" in Latin-1, a digit to
    str.isdigit() but not to int()."""
    import http.client
    import json

    experiment = submit(distributed, {**SMALL, "training": {"epochs": 1, "batch_size": 64}})
    done = wait_status(distributed, experiment["id"], TERMINAL)
    url = distributed.base_url
    path = f"/api/v1/experiments/{experiment['id']}"

    def raw_get(suffix: str, headers: dict[str, bytes]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(url.host, url.port, timeout=30)
        try:
            connection.request("GET", path + suffix, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    for value in (b"\xb2", b"\xb9\xb2", "²".encode()):
        status, body = raw_get("/stream", {"Last-Event-ID": value})
        assert status == 200, body  # no id this API sent: the stream starts from the beginning
        assert b"id: " in body and b"event: end" in body
    status, body = raw_get("", {"If-None-Match": b"\xb2"})
    assert status == 400 and b"If-None-Match" in body
    assert json.loads(raw_get("", {"If-None-Match": b"*"})[1] or b"{}") == {}  # 304, no body
    assert done["status"] == "succeeded"


def test_a_worker_serves_its_own_metrics_when_asked(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    port = free_port()
    env = service_env(tmp_path, NORMLAB_DATABASE_URL=postgres_url, NORMLAB_BROKER_URL=redis_url,
                      NORMLAB_WORKER_METRICS_PORT=str(port), NORMLAB_RECONCILE_IN_WORKER="false")
    worker = start_worker(env, tmp_path, name="exporter")  # returns once the worker is ready
    try:
        text_body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        names = {f.name for f in text_string_to_metric_families(text_body)}
        assert {"normlab_metric_points_written", "normlab_sink_write_duration_seconds"} <= names
    finally:
        # SIGTERM to the worker alone, as a service manager sends it (Process.stop signals the
        # whole group, and a pool child killed by that signal is logged as an ERROR by Celery).
        worker.proc.send_signal(signal.SIGTERM)
        worker.proc.wait(HANG_S)
        worker.stop()
    log = (tmp_path / "exporter.log").read_text()
    assert "ERROR" not in log, log[-3000:]
