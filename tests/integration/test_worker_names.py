"""Two `normlab worker` processes on one host: distinct names, in the API and in the logs."""

from __future__ import annotations

import re
import socket
import sys
from pathlib import Path

import httpx
import redis

from app.db.migrate import upgrade
from tests.integration.conftest import (
    SMALL,
    TERMINAL,
    Process,
    service_env,
    start_api,
    wait_status,
)

LONG = {**SMALL, "training": {"epochs": 1000, "batch_size": 16}}


def start_cli_worker(env: dict[str, str], tmp: Path, log: str, *name: str) -> Process:
    argv = [sys.executable, "-m", "app.cli.main", "worker", "--queues", "cpu", *name]
    worker = Process(argv, env, tmp / log, tmp)
    worker.wait_for_log("ready.")
    return worker


def test_two_workers_on_one_host_have_their_own_names(
    postgres_url: str, redis_url: str, tmp_path: Path
) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    upgrade(postgres_url)
    env = service_env(tmp_path, NORMLAB_DATABASE_URL=postgres_url, NORMLAB_BROKER_URL=redis_url,
                      NORMLAB_RECONCILE_IN_WORKER="false")
    host = socket.gethostname()
    named = start_cli_worker(env, tmp_path, "named.log", "--name", "alpha")
    default = start_cli_worker(env, tmp_path, "default.log")
    api, base = start_api(env, tmp_path)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            # The first one keeps its worker busy (one job per worker), so the second one must
            # go to the other worker.
            first = client.post("/api/v1/experiments", json=LONG).json()
            busy = wait_status(client, first["id"], {"running"})["worker"]
            second = client.post("/api/v1/experiments", json=LONG).json()
            other = wait_status(client, second["id"], {"running"})["worker"]
            for experiment in (first, second):
                client.post(f"/api/v1/experiments/{experiment['id']}/cancel")
                assert wait_status(client, experiment["id"], TERMINAL)["status"] == "cancelled"
    finally:
        api.stop()
        named.stop()
        default.stop()
    default_name = f"normlab-{default.proc.pid}@{host}"
    assert {busy, other} == {f"alpha@{host}", default_name}
    claims = {}
    for worker, name in ((named, f"alpha@{host}"), (default, default_name)):
        text = worker.log.read_text()
        assert f"{name} ready." in text
        claimed = re.findall(rf"{re.escape(name)} claimed ([0-9a-f-]+)", text)
        assert len(claimed) == 1, text[-3000:]
        claims[name] = claimed[0]
    assert claims == {busy: first["id"], other: second["id"]}
