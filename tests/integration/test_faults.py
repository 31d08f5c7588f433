"""Fault tests on real processes, Redis and Postgres: no experiment lost or run twice."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    TERMINAL,
    Process,
    all_points,
    get_json,
    service_env,
    start_api,
    start_worker,
    wait_status,
)
from tests.waiting import HANG_S, wait_until

# Long enough to interrupt after a checkpoint, short enough for CI: ~6 epochs of ~1 s on 2 cores.
LONG: dict[str, Any] = {
    "dataset": {"name": "synthetic", "synthetic": {"samples": 6000, "features": 256}},
    "model": {"hidden_layers": [256, 128]},
    "optimizer": {"learning_rate": 0.05},
    "training": {"epochs": 6, "batch_size": 32},
    "resources": {"device": "cpu"},
}


class Stack:
    """An API process plus any number of worker processes sharing Postgres and Redis."""

    def __init__(self, env: dict[str, str], tmp: Path, client: httpx.Client) -> None:
        self.env, self.tmp, self.client = env, tmp, client
        self.workers: list[Process] = []

    def worker(self, name: str, **env: str) -> Process:
        process = start_worker({**self.env, **env}, self.tmp, name=name)
        self.workers.append(process)
        return process

    def submit(self, body: dict[str, Any]) -> str:
        response = self.client.post("/api/v1/experiments", json=body)
        assert response.status_code == 202, response.text
        return str(response.json()["id"])

    def get(self, experiment_id: str) -> dict[str, Any]:
        body: dict[str, Any] = get_json(self.client, f"/api/v1/experiments/{experiment_id}")
        return body

    def wait_epochs(self, experiment_id: str, epochs: int) -> None:
        wait_until(
            lambda: len(all_points(self.client, experiment_id, names="test_accuracy")) >= epochs,
            f"{experiment_id} to reach epoch {epochs}", interval=0.1,
        )


@pytest.fixture
def stack(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[Stack]:
    import redis

    from app.db.migrate import upgrade

    redis.Redis.from_url(redis_url).flushdb()
    upgrade(postgres_url)
    env = service_env(
        tmp_path,
        NORMLAB_DATABASE_URL=postgres_url,
        NORMLAB_BROKER_URL=redis_url,
        # Long enough that a starved but live job is never taken for lost on a busy machine; the
        # tests that kill a worker give their rescuer a short one (RESCUER).
        NORMLAB_HEARTBEAT_TIMEOUT_S="60",
        NORMLAB_RECONCILE_INTERVAL_S="0.5",
        NORMLAB_QUEUED_GRACE_S="2",
    )
    api, base = start_api(env, tmp_path)
    client = httpx.Client(base_url=base, timeout=30)
    stack = Stack(env, tmp_path, client)
    try:
        yield stack
    finally:
        for worker in stack.workers:
            worker.stop(signal.SIGKILL)
        client.close()
        api.stop()


def assert_gapless(client: httpx.Client, experiment: dict[str, Any]) -> None:
    """Every step once, every epoch's evaluation once: as if never interrupted."""
    experiment_id, summary = experiment["id"], experiment["summary"]
    epochs = experiment["config"]["training"]["epochs"]
    assert summary["epochs_completed"] == epochs
    loss = [p["step"] for p in all_points(client, experiment_id, names="loss")]
    assert loss == list(range(1, summary["steps"] + 1))
    evals = [p["epoch"] for p in all_points(client, experiment_id, names="test_accuracy")]
    assert evals == list(range(1, epochs + 1))


# A worker started after another was killed: its reconciler takes the dead one's run back soon.
RESCUER = {"NORMLAB_HEARTBEAT_TIMEOUT_S": "3"}


def test_sigkill_worker_then_another_resumes(stack: Stack) -> None:
    first = stack.worker("victim")
    experiment_id = stack.submit(LONG)
    stack.wait_epochs(experiment_id, 2)
    first.stop(signal.SIGKILL)  # the whole process group: parent, job and reconciler
    stack.worker("rescuer", **RESCUER)
    done = wait_status(stack.client, experiment_id, TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and done["worker"].startswith("rescuer@")
    assert_gapless(stack.client, done)


def test_redis_flush_loses_no_queued_experiment(stack: Stack, redis_url: str) -> None:
    import redis

    small = {**LONG, "training": {"epochs": 1, "batch_size": 64}}
    ids = [stack.submit(small) for _ in range(3)]  # no worker yet: all stay queued
    redis.Redis.from_url(redis_url).flushdb()  # all the broker's data (this database number)
    worker = stack.worker("after-flush")
    for experiment_id in ids:
        done = wait_status(stack.client, experiment_id, TERMINAL)
        # Run once, from the one re-sent message each.
        assert (done["status"], done["attempt"], done["dispatch_count"]) == ("succeeded", 1, 2)
    log = worker.log.read_text()
    assert all(f"re-sent {i} (dispatch 2): no message in the broker" in log for i in ids)


def _restart_postgres() -> None:
    cluster = sorted(os.listdir("/etc/postgresql"))[0]
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", cluster, "main", "restart"],
        check=True,
        capture_output=True,
    )


def test_postgres_restart_loses_no_point(stack: Stack) -> None:
    if not Path("/etc/postgresql").is_dir() or os.geteuid() != 0:
        pytest.skip("needs a local Postgres cluster this test may restart")
    stack.worker("steady")
    experiment_id = stack.submit({**LONG, "training": {"epochs": 60, "batch_size": 32}})
    stack.wait_epochs(experiment_id, 1)
    _restart_postgres()
    assert stack.get(experiment_id)["status"] == "running"  # the restart hit a live run
    done = wait_status(stack.client, experiment_id, TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1
    assert_gapless(stack.client, done)


def test_redelivery_never_trains_twice(stack: Stack) -> None:
    # Redis hands an unacknowledged message to another worker after 2 s (checked every second).
    short_visibility = {
        "NORMLAB_VISIBILITY_TIMEOUT_S": "2",
        "NORMLAB_REDIS_RESTORE_INTERVAL_S": "1",
    }
    one = stack.worker("one", **short_visibility)
    two = stack.worker("two", **short_visibility)
    experiment_id = stack.submit({**LONG, "training": {"epochs": 20, "batch_size": 32}})
    done = wait_status(stack.client, experiment_id, TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1  # exactly one claim
    assert_gapless(stack.client, done)
    logs = one.log.read_text() + two.log.read_text()
    assert logs.count(f"claimed {experiment_id}") == 1
    assert f"skipped {experiment_id}" in logs  # it was delivered again, and refused


def test_sigterm_hands_back_and_another_worker_resumes(stack: Stack) -> None:
    leaving = stack.worker("leaving")
    experiment_id = stack.submit(LONG)
    stack.wait_epochs(experiment_id, 2)
    os.kill(leaving.proc.pid, signal.SIGTERM)  # the worker's parent, as `docker stop` does
    leaving.proc.wait(timeout=HANG_S)  # it exits by itself: a bounded shutdown
    assert "handed back" in leaving.log.read_text()
    assert stack.get(experiment_id)["status"] in ("queued", "running")
    stack.worker("next")
    done = wait_status(stack.client, experiment_id, TERMINAL)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and done["worker"].startswith("next@")
    assert_gapless(stack.client, done)


def test_a_worker_past_its_first_job_still_hands_back_cleanly(stack: Stack) -> None:
    # Its second job runs in a child forked by the pool's supervisor thread (one job per child),
    # whose end at shutdown used to SIGKILL that child mid hand-back.
    worker = stack.worker("seasoned")
    first = stack.submit({**LONG, "training": {"epochs": 1, "batch_size": 64}})
    assert wait_status(stack.client, first, TERMINAL)["status"] == "succeeded"
    second = stack.submit(LONG)
    stack.wait_epochs(second, 1)
    os.kill(worker.proc.pid, signal.SIGTERM)
    worker.proc.wait(timeout=HANG_S)
    log = worker.log.read_text()
    assert f"experiment {second} handed back" in log, log[-3000:]
    assert "ERROR" not in log, log[-3000:]
    assert stack.get(second)["status"] == "queued"


def test_cancel_in_every_state(stack: Stack) -> None:
    queued = stack.submit(LONG)  # no worker: stays queued
    response = stack.client.post(f"/api/v1/experiments/{queued}/cancel")
    assert response.status_code == 202 and response.json()["status"] == "cancelled"

    worker = stack.worker("w")
    running = stack.submit(LONG)
    wait_status(stack.client, running, {"running"})
    stack.client.post(f"/api/v1/experiments/{running}/cancel")
    stopped = wait_status(stack.client, running, TERMINAL)
    assert stopped["status"] == "cancelled"  # not "succeeded": it stopped before its last epoch

    orphan = stack.submit(LONG)
    stack.wait_epochs(orphan, 1)
    worker.stop(signal.SIGKILL)
    assert stack.client.post(f"/api/v1/experiments/{orphan}/cancel").json()["status"] == (
        "cancelling"
    )
    stack.worker("cleaner", **RESCUER)  # its reconciler finds the orphan's heartbeat stale
    done = wait_status(stack.client, orphan, TERMINAL)
    assert done["status"] == "cancelled" and done["attempt"] == 1  # never resumed
