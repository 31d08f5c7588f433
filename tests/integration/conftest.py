"""Real services for integration tests: Postgres, Redis, a `celery worker` process and a uvicorn
API process. Locally a missing service skips these tests; in CI (CI=true) it fails them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.waiting import HANG_S

TERMINAL = {"succeeded", "diverged", "failed", "cancelled"}


def require(env_var: str) -> str:
    value = os.environ.get(env_var)
    if value:
        return value
    if os.environ.get("CI") == "true":
        pytest.fail(f"{env_var} must be set in CI: integration tests may not skip")
    pytest.skip(f"{env_var} not set")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Process:
    """A child process whose output goes to a log file (shown when a test fails)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> None:
        self.log = log
        self._file = log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            env=env,
            stdout=self._file,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,
        )

    def wait_for_log(self, text: str, timeout: float = HANG_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"{text!r} not seen; log:\n{self.log.read_text()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._file.close()


def service_env(tmp: Path, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NORMLAB_")}
    env.update(
        NORMLAB_DATA_DIR=str(tmp / "data"),
        NORMLAB_ARTIFACTS_DIR=str(tmp / "artifacts"),
        NORMLAB_METRIC_FLUSH_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def start_worker(env: dict[str, str], tmp: Path, name: str = "w1", concurrency: int = 1) -> Process:
    argv = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.tasks:celery_app",
        "worker",
        "--queues",
        "gpu,cpu",
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{name}@%h",
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    worker = Process(argv, env, tmp / f"{name}.log", tmp)
    worker.wait_for_log("ready.")
    return worker


def start_api(env: dict[str, str], tmp: Path, *extra: str) -> tuple[Process, str]:
    port = free_port()
    argv = [sys.executable, "-m", "app.cli.main", "serve", "--port", str(port), *extra]
    api = Process(argv, env, tmp / "api.log", tmp)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HANG_S
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return api, base
        except httpx.HTTPError:
            pass
        if api.proc.poll() is not None:
            break
        time.sleep(0.2)
    api.stop()
    raise AssertionError(f"API did not start; log:\n{api.log.read_text()[-4000:]}")


def get_json(client: httpx.Client, path: str, **params: Any) -> Any:
    """GET as a well-behaved client does: a 503 (database restarting) is retried, not fatal."""
    deadline = time.monotonic() + HANG_S
    while True:
        response = client.get(path, params=params or None)
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code == 200, (path, response.status_code, response.text)
            return response.json()
        time.sleep(float(response.headers.get("retry-after", "1")))


def wait_status(
    client: httpx.Client, experiment_id: str, statuses: set[str], timeout: float = HANG_S
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = get_json(client, f"/api/v1/experiments/{experiment_id}")
        if body["status"] in statuses:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{experiment_id} still {body.get('status')} after {timeout}s: {body}")


def all_points(client: httpx.Client, experiment_id: str, **params: Any) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    after = -1
    while True:
        page = get_json(
            client,
            f"/api/v1/experiments/{experiment_id}/metrics",
            after_step=after,
            limit=10000,
            **params,
        )
        if not page["items"]:
            return points
        points += page["items"]
        after = page["next_after_step"]


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return require("NORMLAB_TEST_POSTGRES_URL")


@pytest.fixture(scope="session")
def redis_url() -> str:
    return require("NORMLAB_TEST_REDIS_URL")


@pytest.fixture(scope="module")
def distributed(
    postgres_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """Postgres + Redis + one real Celery worker + the API in distributed mode."""
    import redis

    from app.db.migrate import upgrade

    tmp = tmp_path_factory.mktemp("distributed")
    redis.Redis.from_url(redis_url).flushdb()
    upgrade(postgres_url)
    env = service_env(tmp, NORMLAB_DATABASE_URL=postgres_url, NORMLAB_BROKER_URL=redis_url)
    worker = start_worker(env, tmp)
    try:
        api, base = start_api(env, tmp)
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                yield client
        finally:
            api.stop()
    finally:
        worker.stop()


SMALL = {
    "dataset": {"name": "digits"},
    "model": {"hidden_layers": [64, 32]},
    "optimizer": {"learning_rate": 0.1},
    "training": {"epochs": 3, "batch_size": 64},
    "resources": {"device": "cpu"},
}
