"""The command line's conventions, run as a user runs it (a subprocess): results on stdout,
problems in one line on stderr without a traceback (unless --debug), documented exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from app.core.config import Settings
from app.db.session import engine_for
from app.main import create_app
from tests.api.helpers import FakeDispatcher, finish
from tests.integration.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ["--set", "dataset.name=digits", "--set", "model.hidden_layers=[16]",
          "--set", "training.epochs=1", "--set", "resources.device=cpu"]


def normlab(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("NORMLAB_")}
    full_env.update(PYTHONPATH=str(ROOT), **(env or {}))
    return subprocess.run([sys.executable, "-m", "app.cli.main", *args], env=full_env,
                          capture_output=True, text=True, timeout=300, check=False)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and not result.stdout
    return lines[0]


@pytest.fixture
def data_env(tmp_path: Path) -> dict[str, str]:
    return {"NORMLAB_DATA_DIR": str(tmp_path / "data")}


class LiveServer:
    def __init__(self, settings: Settings, url: str) -> None:
        self.settings, self.url = settings, url


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real app on a real port, in this process (its worker is a recording fake)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path}/t.db", data_dir=tmp_path / "data",
                        artifacts_dir=tmp_path / "art", max_steps_per_experiment=1000)
    app = create_app(settings, dispatcher=FakeDispatcher())
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    ready = threading.Event()
    while not ready.wait(0.05):  # a state, not a duration: the server says it has started
        if uv.started:
            ready.set()
        assert thread.is_alive(), "the server did not start"
    yield LiveServer(settings, f"http://127.0.0.1:{port}")
    uv.should_exit = True
    thread.join()
    engine_for(settings.database_url).dispose()


def test_version() -> None:
    result = normlab("--version")
    assert result.returncode == 0 and result.stdout.startswith("normlab ")


def test_unreachable_server_is_one_line_and_exit_4() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["status", "00000000-0000-0000-0000-000000000000"], ["submit", *DIGITS]):
        result = normlab(*args, "--url", url)
        assert result.returncode == 4, result.stderr
        line = one_line(result)
        assert url in line and "normlab serve" in line
    debug = normlab("--debug", "status", "x", "--url", url)
    assert debug.returncode == 4 and "Traceback" in debug.stderr


def test_refusals_of_the_server(server: LiveServer) -> None:
    missing = "3f6c2a1e-8d4b-4c1a-9a7e-2b5d0c9e4f11"
    result = normlab("status", missing, "--url", server.url)
    assert result.returncode == 2 and one_line(result) == (
        f"error 404: experiment {missing} not found")
    # A 422 from the server (its quota: 1,000 steps), each field as `loc: message`.
    result = normlab("submit", *DIGITS, "--set", "training.epochs=50", "--url", server.url)
    assert result.returncode == 2
    assert one_line(result).startswith("training: this config trains ")


def test_submit_prints_the_id_and_status_a_rounded_table(server: LiveServer) -> None:
    result = normlab("submit", *DIGITS, "--url", server.url)
    assert result.returncode == 0 and not result.stderr
    experiment_id = result.stdout.strip()
    summary: dict[str, Any] = {
        "status": "succeeded", "steps": 26, "final_test_accuracy": 0.9025069637883009,
        "final_loss": 0.31234567, "duration_s": 1234.5678, "samples_per_s": 18234.51,
    }
    finish(server.settings, experiment_id, summary=summary)
    result = normlab("status", experiment_id, "--url", server.url)
    assert result.returncode == 0 and not result.stderr
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines()[1:])
    assert [line.split()[0] for line in result.stdout.splitlines()[1:]].count("status") == 1
    assert rows["final_test_accuracy"] == "0.9025" and rows["final_loss"] == "0.3123"
    assert rows["duration_s"] == "1234.6" and rows["samples_per_s"] == "18235"
    assert rows["error"] == rows["diverged_at_step"] == "—"  # the one null marker
    assert "None" not in result.stdout
    full = json.loads(normlab("status", experiment_id, "--json", "--url", server.url).stdout)
    assert full["summary"]["final_test_accuracy"] == 0.9025069637883009


def test_train_results_on_stdout_and_exit_codes(data_env: dict[str, str]) -> None:
    result = normlab("train", *DIGITS, env=data_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == "experiment on cpu"
    assert re.search(r"^status +succeeded$", result.stdout, re.M), result.stdout
    assert "Traceback" not in result.stderr
    diverged = normlab("train", *DIGITS, "--set", "optimizer.learning_rate=10",
                       "--set", "model.batch_norm.enabled=false", "--json", env=data_env)
    assert diverged.returncode == 3, diverged.stderr
    payload = json.loads(diverged.stdout)  # --json: full precision, machine-readable
    assert payload["summary"]["status"] == "diverged"
    assert payload["config"]["optimizer"]["learning_rate"] == 10


def test_usage_and_config_errors_exit_2(data_env: dict[str, str]) -> None:
    assert normlab("train", "--nope", env=data_env).returncode == 2
    result = normlab("train", *DIGITS, "--set", "training.epochs=0", env=data_env)
    assert result.returncode == 2 and "training.epochs:" in result.stderr


def test_a_dataset_that_needs_a_download_offline(data_env: dict[str, str]) -> None:
    env = {**data_env, "NORMLAB_MNIST_MIRRORS": "file:///nonexistent/"}
    result = normlab("train", "--preset", "geron-bn", "--set", "training.epochs=1", env=env)
    assert result.returncode == 2
    line = one_line(result)
    assert "'mnist'" in line and "--set dataset.name=mnist_5k" in line
    listed = normlab("presets", env=data_env)
    assert "geron-bn     mnist    yes (offline: --set dataset.name=mnist_5k)" in listed.stdout


def test_a_device_this_machine_lacks(data_env: dict[str, str]) -> None:
    result = normlab("train", *DIGITS, "--device", "cuda:99", env=data_env)
    assert result.returncode == 2
    assert "--device cpu" in one_line(result)

