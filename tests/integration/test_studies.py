"""Studies on the real stack: Postgres, Redis, two real worker processes; and embedded serve."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.database import truncate_all
from tests.integration.conftest import (
    TERMINAL,
    get_json,
    service_env,
    start_api,
    start_worker,
)
from tests.waiting import HANG_S

TINY = {
    "dataset": {"name": "digits"},
    "model": {"hidden_layers": [32]},
    "optimizer": {"learning_rate": 0.1},
    "training": {"epochs": 2, "batch_size": 64},
    "resources": {"device": "cpu"},
}


def study_spec(seeds: int, **changes: Any) -> dict[str, Any]:
    return {
        "name": "it-study", "base": TINY, "seeds": seeds,
        "factors": {"model.batch_norm.enabled": [False, True],
                    "clipping": [{"mode": "none"}, {"mode": "norm", "threshold": 1.0}]},
        **changes,
    }


def wait_study(client: httpx.Client, study_id: str, timeout: float = 600) -> dict[str, Any]:
    """Poll the study until every member is terminal (a state, not a duration)."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        doc = get_json(client, f"/api/v1/studies/{study_id}")
        if doc["progress"]["terminal"]:
            return doc
        time.sleep(0.3)
    raise AssertionError(f"study {study_id} not terminal after {timeout}s: {doc.get('progress')}")


def member_list(client: httpx.Client, study_id: str, **params: Any) -> list[dict[str, Any]]:
    return list(get_json(client, "/api/v1/experiments", study_id=study_id, limit=200,
                         **params)["items"])


@pytest.fixture(scope="module")
def stack(postgres_url: str, redis_url: str,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """Postgres + Redis + two Celery worker processes + the API."""
    import redis

    from app.db.migrate import upgrade

    tmp = tmp_path_factory.mktemp("studies")
    redis.Redis.from_url(redis_url).flushdb()
    upgrade(postgres_url)
    truncate_all(postgres_url)  # quotas count what others left
    env = service_env(tmp, NORMLAB_DATABASE_URL=postgres_url, NORMLAB_BROKER_URL=redis_url,
                      NORMLAB_TORCH_THREADS="1")
    workers = [start_worker(env, tmp, name) for name in ("s1", "s2")]
    try:
        api, base = start_api(env, tmp)
        try:
            with httpx.Client(base_url=base, timeout=30) as client:
                yield client
        finally:
            api.stop()
    finally:
        for worker in workers:
            worker.stop()


def test_a_2x2x4_study_end_to_end(stack: httpx.Client) -> None:
    response = stack.post("/api/v1/studies", json=study_spec(4))
    assert response.status_code == 202, response.text
    study = response.json()
    assert study["n_members"] == 16
    doc = wait_study(stack, study["id"])
    assert doc["progress"]["by_status"] == {"succeeded": 16}, doc["progress"]
    members = member_list(stack, study["id"])
    assert len(members) == 16 and all(m["study"]["id"] == study["id"] for m in members)
    assert {(m["study"]["cell"], m["study"]["seed"]) for m in members} == {
        (c, s) for c in range(4) for s in range(4)}
    assert [c["n_pairs"] for c in doc["contrasts"]] == [8, 8]
    assert all(c["verdict"] for c in doc["contrasts"]) and len(doc["interactions"]) == 1
    assert all(c["n_finished"] == 4 and c["mean"] > 0.5 for c in doc["cells"])
    again = stack.get(f"/api/v1/studies/{study['id']}")
    assert again.content == stack.get(f"/api/v1/studies/{study['id']}").content
    csv_lines = stack.get(f"/api/v1/studies/{study['id']}/results.csv").text.splitlines()
    assert len(csv_lines) == 17
    curves = get_json(stack, f"/api/v1/studies/{study['id']}/curves", metric="val_accuracy")
    assert all(b["members"] == 4 for cell in curves["cells"] for b in cell["buckets"])
    assert stack.delete(f"/api/v1/studies/{study['id']}").status_code == 204
    assert member_list(stack, study["id"]) == []


def test_cancel_mid_study_and_a_quota_refusal(stack: httpx.Client) -> None:
    long = {**TINY, "training": {"epochs": 1000, "batch_size": 16}}
    study = stack.post("/api/v1/studies", json=study_spec(1, base=long)).json()
    deadline = time.monotonic() + HANG_S
    while not member_list(stack, study["id"], status="running"):  # a member is training
        assert time.monotonic() < deadline, "no member started"
        time.sleep(0.3)
    # 4 active members + 17 more than the default quota of 20: refused whole, nothing created.
    before = len(get_json(stack, "/api/v1/experiments", limit=200)["items"])
    refused = stack.post("/api/v1/studies", json={
        "name": "too-many", "base": TINY, "seeds": 17,
        "factors": {"optimizer.learning_rate": [0.1]}})
    assert refused.status_code == 429, refused.text
    assert len(get_json(stack, "/api/v1/experiments", limit=200)["items"]) == before
    assert [s["name"] for s in get_json(stack, "/api/v1/studies")["items"]] == ["it-study"]

    cancelled = stack.post(f"/api/v1/studies/{study['id']}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["cancelling"] >= 1
    doc = wait_study(stack, study["id"])
    assert set(doc["progress"]["by_status"]) == {"cancelled"}
    assert all(m["status"] in TERMINAL for m in member_list(stack, study["id"]))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    tmp: Path = tmp_path_factory.mktemp("embedded-study")
    env = service_env(tmp, NORMLAB_DATABASE_URL=f"sqlite:///{tmp}/normlab.db")
    api, base = start_api(env, tmp)
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client
    finally:
        api.stop()


def test_embedded_serve_runs_a_small_study(embedded: httpx.Client) -> None:
    spec = {"name": "embedded", "base": {**TINY, "training": {"epochs": 1, "batch_size": 64}},
            "factors": {"model.batch_norm.enabled": [False, True]}, "seeds": 2}
    study = embedded.post("/api/v1/studies", json=spec).json()
    doc = wait_study(embedded, study["id"])
    assert doc["progress"]["by_status"] == {"succeeded": 4}
    assert doc["contrasts"][0]["n_pairs"] == 2
    assert doc["contrasts"][0]["verdict"].startswith("too few pairs")
