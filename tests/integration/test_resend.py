"""The reconciler re-sends only what the broker lost, on real processes, Redis and Postgres: a
busy worker's backlog is never copied, and a send that failed after the commit is made good."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import update

from app.db.experiments import ACTIVE
from app.db.migrate import upgrade
from app.db.models import Experiment
from app.db.session import session_scope
from tests.integration.conftest import (
    SMALL,
    TERMINAL,
    Process,
    get_json,
    service_env,
    start_api,
    start_worker,
    wait_status,
)
from tests.waiting import HANG_S

TINY: dict[str, Any] = {**SMALL, "model": {"hidden_layers": [8]},
                        "training": {"epochs": 1, "batch_size": 512}}
BUSY: dict[str, Any] = {**SMALL, "training": {"epochs": 1000, "batch_size": 16}}
QUEUED = 50
SLACK = 2  # the busy job's own (unacknowledged) message, and one being handed to the worker


def broker_messages(client: redis.Redis) -> int:
    """Every message the broker holds: waiting in a queue, or taken and not acknowledged."""
    names = [key for key in client.scan_iter() if key.split(b"\x06\x16")[0] in (b"cpu", b"gpu")]
    return sum(int(client.llen(name)) for name in names) + int(client.hlen("unacked"))


@pytest.fixture
def env(postgres_url: str, redis_url: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    redis.Redis.from_url(redis_url).flushdb()  # this test database number only
    upgrade(postgres_url)
    # Experiments other tests left queued or running would be re-sent and run here too.
    with session_scope(postgres_url) as session:
        session.execute(update(Experiment).where(Experiment.status.in_(ACTIVE))
                        .values(status="cancelled"))
        session.commit()
    yield service_env(tmp_path, NORMLAB_DATABASE_URL=postgres_url, NORMLAB_BROKER_URL=redis_url,
                      NORMLAB_QUEUED_GRACE_S="2", NORMLAB_RECONCILE_INTERVAL_S="0.5",
                      NORMLAB_MAX_ACTIVE_PER_OWNER=str(QUEUED + 5))
    redis.Redis.from_url(redis_url).flushdb()


def passes_holding_all(worker: Process) -> int:
    """Reconciler passes (in the worker's log) that found every queued experiment past the grace
    period with its message still in the broker, and re-sent nothing."""
    line = (f"{QUEUED} queued past the grace period, {QUEUED} with a message in the broker, "
            "re-sending 0")
    return worker.log.read_text().count(line)


def test_a_busy_workers_backlog_is_never_copied_and_runs_once(
    env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    broker = redis.Redis.from_url(redis_url)
    worker = start_worker(env, tmp_path, name="busy")
    api, base = start_api(env, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            busy = client.post("/api/v1/experiments", json=BUSY).json()
            wait_status(client, busy["id"], {"running"})
            ids = [client.post("/api/v1/experiments", json=TINY).json()["id"]
                   for _ in range(QUEUED)]
            # Several grace periods pass, measured in reconciler passes, not in seconds.
            most = 0
            deadline = time.monotonic() + HANG_S
            while passes_holding_all(worker) < 3:
                most = max(most, broker_messages(broker))
                assert time.monotonic() < deadline, worker.log.read_text()[-3000:]
                assert wait_status(client, busy["id"], TERMINAL | {"running"})["status"] == (
                    "running")
                time.sleep(0.1)  # a polling interval: nothing is ordered by it
            assert most <= QUEUED + SLACK
            assert client.post(f"/api/v1/experiments/{busy['id']}/cancel").status_code == 202
            done = [wait_status(client, i, TERMINAL, timeout=900) for i in ids]
            assert [d["status"] for d in done] == ["succeeded"] * QUEUED
            assert {(d["attempt"], d["dispatch_count"]) for d in done} == {(1, 1)}
    finally:
        api.stop()
        worker.stop()
    log = worker.log.read_text()
    assert [log.count(f"claimed {i}") for i in ids] == [1] * QUEUED
    assert "re-sent" not in log
    assert broker_messages(broker) == 0


def test_a_send_that_failed_after_the_commit_is_resent(
    env: dict[str, str], tmp_path: Path
) -> None:
    worker = start_worker(env, tmp_path, name="rescuer")
    # This API's broker is unreachable: its send raises after the experiment was committed.
    api, base = start_api({**env, "NORMLAB_BROKER_URL": "redis://127.0.0.1:1/0"}, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=60) as client:
            response = client.post("/api/v1/experiments", json=TINY)
            assert response.status_code == 202, response.text
            experiment_id = response.json()["id"]
            done = wait_status(client, experiment_id, TERMINAL, timeout=300)
            assert (done["status"], done["attempt"], done["dispatch_count"]) == (
                "succeeded", 1, 2)
            assert get_json(client, f"/api/v1/experiments/{experiment_id}")["worker"].startswith(
                "rescuer@")
    finally:
        api.stop()
        worker.stop()
    assert "could not send experiment" in api.log.read_text()
    assert f"re-sent {experiment_id} (dispatch 2): no message in the broker" in (
        worker.log.read_text())
