"""GET /metrics: Prometheus text that prometheus_client's own parser reads, behind an admin key."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from app.core import telemetry
from app.core.config import Settings
from app.db import keys
from app.db.models import Experiment
from app.db.session import session_scope
from tests.api.helpers import API, claim, finish, submit

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def value(found: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


def test_metrics_parse_and_count(client: TestClient, settings: Settings) -> None:
    cpu = submit(client, {"resources": {"device": "cpu"}})["id"]
    submit(client, {"resources": {"device": "cuda"}})
    running = submit(client, {})["id"]
    finish(settings, cpu, summary={"status": "succeeded"})
    claim(settings, running)
    stamp = datetime.now(UTC) - timedelta(seconds=120)
    with session_scope(settings.database_url) as session:
        session.execute(update(Experiment).where(Experiment.status == "queued")
                        .values(created_at=stamp))
        session.execute(update(Experiment).where(Experiment.status == "running")
                        .values(heartbeat_at=stamp))
    before = samples(client.get("/metrics").text)
    for _ in range(3):
        assert client.get(f"{API}/experiments/{running}").status_code == 200
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    assert value(found, "normlab_experiments", status="succeeded", queue="cpu") == 1
    assert value(found, "normlab_experiments", status="queued", queue="gpu") == 1
    assert value(found, "normlab_experiments", status="running", queue="cpu") == 1  # auto → cpu
    assert value(found, "normlab_experiments", status="failed") == 0  # every status, zeros too
    assert value(found, "normlab_oldest_queued_age_seconds") >= 120
    assert value(found, "normlab_worker_heartbeat_age_seconds", worker="test-worker") >= 120
    route = {"method": "GET", "route": "/api/v1/experiments/{experiment_id}", "status": "200"}
    counted = value(found, "normlab_http_requests_total", **route)
    assert counted - value(before, "normlab_http_requests_total", **route) == 3
    assert value(found, "normlab_http_request_duration_seconds_count", **route) >= 3
    assert "normlab_metric_points_written_total" in found
    client.get("/no/such/path")
    unmatched = samples(client.get("/metrics").text)
    assert value(unmatched, "normlab_http_requests_total", route="unmatched", status="404") >= 1


def test_metrics_need_an_admin_key_once_keys_exist(client: TestClient, settings: Settings) -> None:
    assert client.get("/metrics").status_code == 200  # no keys: loopback only, open
    with session_scope(settings.database_url) as session:
        alice = keys.create(session, owner="alice")
        admin = keys.create(session, owner="root", admin=True)
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {alice}"}).status_code == 403
    response = client.get("/metrics", headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 200 and "normlab_experiments" in response.text


COUNT_IN_A_PROCESS = """
from app.core import telemetry
found = telemetry.instruments()
found.points_written.inc(5)
found.requests.labels("GET", "/healthz", "200").inc()
found.sink_write_seconds.observe(0.01)
"""


def test_processes_sum_into_one_scrape(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve --workers N and each job's process count into one directory; any scrape sums it."""
    monkeypatch.setenv(telemetry.MULTIPROC_ENV, str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(2):
        subprocess.run([sys.executable, "-c", COUNT_IN_A_PROCESS], env=env, check=True,
                       timeout=60)
    from prometheus_client import generate_latest

    found = samples(generate_latest(telemetry.registry()).decode())
    assert value(found, "normlab_metric_points_written_total") == 10
    assert value(found, "normlab_http_requests_total", route="/healthz") == 2
    assert value(found, "normlab_sink_write_duration_seconds_count") == 2


def test_requests_are_labelled_by_route_template(client: TestClient) -> None:
    experiment = submit(client, {})["id"]
    assert client.get(f"{API}/experiments/{experiment}/metrics/grad_norm/hidden1/series"
                      ).status_code == 200
    found = samples(client.get("/metrics").text)
    template = "/api/v1/experiments/{experiment_id}/metrics/{name}/series"
    assert value(found, "normlab_http_requests_total", route=template, status="200") >= 1
    assert not any(experiment in labels.get("route", "")
                   for labels, _ in found["normlab_http_requests_total"])
