"""API keys, per-owner isolation, quotas, exposure rules and injection attempts."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.cli.service import exposure_problem
from app.core.config import Settings
from app.db import keys
from app.db.models import ApiKey
from app.db.session import session_scope
from tests.api.helpers import API, FakeDispatcher, finish, insert
from tests.waiting import HANG_S
from worker.training.job import planned_steps
from worker.training.presets import build_config
from worker.training.result import MetricPoint

ROOT = Path(__file__).resolve().parents[2]
SMALL = {"dataset": {"name": "digits"}, "training": {"epochs": 2}}


class Keys:
    def __init__(self, settings: Settings) -> None:
        with session_scope(settings.database_url) as session:
            self.alice = keys.create(session, owner="alice")
            self.bob = keys.create(session, owner="bob")
            self.admin = keys.create(session, owner="root", admin=True)

    @staticmethod
    def h(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def ks(client: TestClient, settings: Settings) -> Keys:
    """API keys of two users (alice, bob) and an admin, on the client's database."""
    return Keys(settings)


def submit_as(client: TestClient, key: str, body: dict | None = None) -> str:
    response = client.post(f"{API}/experiments", json=body or SMALL, headers=Keys.h(key))
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def test_without_any_key_the_local_server_is_open(client: TestClient) -> None:
    assert client.post(f"{API}/experiments", json=SMALL).status_code == 202


@pytest.mark.parametrize("header", [None, "", "Basic YWxpY2U6eA==", "Bearer", "Bearer   ",
                                    "Bearer nlk_not-a-real-key-but-long-enough-xxxxxxxxxx",
                                    "Bearer short", "bearer"])
def test_missing_malformed_or_unknown_keys_get_401(client: TestClient, ks: Keys,
                                                   header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    for method, path in [("GET", "/experiments"), ("POST", "/experiments"), ("GET", "/presets"),
                         ("GET", "/readyz"), ("GET", f"/experiments/{uuid.uuid4()}")]:
        response = client.request(method, f"{API}{path}", headers=headers, json={})
        assert response.status_code == 401, (path, response.text)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json()["detail"]


def test_healthz_needs_no_key(client: TestClient, ks: Keys) -> None:
    assert client.get(f"{API}/healthz").status_code == 200
    assert client.get("/healthz").status_code == 200


def test_revoked_key_gets_401(client: TestClient, settings: Settings, ks: Keys) -> None:
    assert client.get(f"{API}/experiments", headers=ks.h(ks.bob)).status_code == 200
    with session_scope(settings.database_url) as session:
        key_id = next(k.key_id for k in keys.list_keys(session) if k.owner == "bob")
        assert keys.revoke(session, key_id)
    assert client.get(f"{API}/experiments", headers=ks.h(ks.bob)).status_code == 401


def test_revoking_every_key_does_not_open_the_api(client: TestClient, settings: Settings,
                                                  ks: Keys) -> None:
    with session_scope(settings.database_url) as session:
        for key in keys.list_keys(session):
            keys.revoke(session, key.key_id)
    assert client.get(f"{API}/experiments").status_code == 401


def test_keys_are_stored_only_as_hashes(client: TestClient, settings: Settings, ks: Keys) -> None:
    with session_scope(settings.database_url) as session:
        stored = " ".join(f"{k.key_id} {k.key_hash}" for k in session.scalars(select(ApiKey)))
    assert ks.alice not in stored and ks.alice[4:20] not in stored


def test_isolation_on_every_route(client: TestClient, settings: Settings, ks: Keys) -> None:
    mine = submit_as(client, ks.alice)
    insert(settings, mine, [MetricPoint("loss", 1, 1, 0.5, 0.0)])
    settings.checkpoint_path(mine).parent.mkdir(parents=True, exist_ok=True)
    settings.checkpoint_path(mine).write_bytes(b"x" * 10)
    routes = [
        ("GET", f"/experiments/{mine}"), ("GET", f"/experiments/{mine}/metrics"),
        ("GET", f"/experiments/{mine}/metrics/names"),
        ("GET", f"/experiments/{mine}/metrics/loss/series"),
        ("GET", f"/experiments/{mine}/stream"), ("GET", f"/experiments/{mine}/checkpoint"),
        ("GET", f"/compare?ids={mine}"), ("POST", f"/experiments/{mine}/cancel"),
        ("DELETE", f"/experiments/{mine}"), ("GET", f"/experiments/{mine}/model"),
    ]
    for method, path in routes:
        other = client.request(method, f"{API}{path}", headers=ks.h(ks.bob))
        assert other.status_code == 404, (path, other.status_code, other.text)
        assert "alice" not in other.text
    assert client.get(f"{API}/experiments", headers=ks.h(ks.bob)).json()["items"] == []
    for key in (ks.alice, ks.admin):  # the owner and an admin see it everywhere
        for method, path in routes[:4] + routes[5:7]:
            assert client.request(method, f"{API}{path}", headers=ks.h(key)).status_code == 200
    listed = client.get(f"{API}/experiments", headers=ks.h(ks.admin)).json()["items"]
    assert [e["id"] for e in listed] == [mine]
    assert client.post(f"{API}/experiments/{mine}/cancel", headers=ks.h(ks.alice)).status_code == (
        202
    )
    assert client.delete(f"{API}/experiments/{mine}", headers=ks.h(ks.admin)).status_code == 204


def test_idempotency_keys_are_per_owner(client: TestClient, ks: Keys) -> None:
    headers = {"Idempotency-Key": "same"}
    a = client.post(f"{API}/experiments", json=SMALL, headers={**ks.h(ks.alice), **headers})
    b = client.post(f"{API}/experiments", json=SMALL, headers={**ks.h(ks.bob), **headers})
    assert a.status_code == b.status_code == 202 and a.json()["id"] != b.json()["id"]


@pytest.fixture
def quota_client(tmp_path: Path) -> tuple[TestClient, Settings, Keys]:
    settings = Settings(database_url=f"sqlite:///{tmp_path}/q.db", data_dir=tmp_path / "d",
                        artifacts_dir=tmp_path / "a", max_active_per_owner=2,
                        max_steps_per_experiment=planned_steps(build_config(SMALL)))
    client = TestClient(__import__("app.main").main.create_app(settings, FakeDispatcher()))
    client.__enter__()
    return client, settings, Keys(settings)


def test_active_experiment_quota(quota_client: tuple[TestClient, Settings, Keys]) -> None:
    client, settings, ks = quota_client
    first = submit_as(client, ks.alice)
    submit_as(client, ks.alice)  # at the limit: still accepted
    over = client.post(f"{API}/experiments", json=SMALL, headers=ks.h(ks.alice))
    assert over.status_code == 429 and int(over.headers["retry-after"]) > 0
    assert "limit 2" in over.json()["detail"]
    submit_as(client, ks.bob)  # quotas are per owner
    finish(settings, first)
    submit_as(client, ks.alice)  # one finished: room again


def test_step_quota_at_and_past_the_boundary(
    quota_client: tuple[TestClient, Settings, Keys],
) -> None:
    client, _, ks = quota_client
    submit_as(client, ks.alice)  # exactly the limit
    bigger = {**SMALL, "training": {"epochs": 3}}
    response = client.post(f"{API}/experiments", json=bigger, headers=ks.h(ks.alice))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "training"]
    assert "limit per experiment" in response.json()["detail"][0]["msg"]


def test_serving_beyond_loopback_needs_a_key(settings: Settings) -> None:
    from app.db.migrate import upgrade

    upgrade(settings.database_url)
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        assert exposure_problem(settings, host) is None
    problem = exposure_problem(settings, "0.0.0.0")
    assert problem is not None and "no API key exists" in problem
    with session_scope(settings.database_url) as session:
        keys.create(session, owner="alice")
    assert exposure_problem(settings, "0.0.0.0") is None


def test_serve_refuses_to_start_exposed_without_keys(tmp_path: Path) -> None:
    env = {"NORMLAB_DATABASE_URL": f"sqlite:///{tmp_path}/x.db", "NORMLAB_DATA_DIR": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "app.cli.main", "serve", "--host", "0.0.0.0",
                           "--port", "1"], env=env, capture_output=True, text=True, timeout=HANG_S,
                          cwd=ROOT)
    assert done.returncode == 2
    assert "refusing to serve" in done.stderr and "127.0.0.1" in done.stderr


def test_compose_requires_secrets_and_has_no_defaults() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    for var in ("POSTGRES_PASSWORD", "NORMLAB_ADMIN_KEY"):
        uses = re.findall(r"\$\{" + var + r"([^}]*)\}", text)
        assert uses and all(u.startswith(":?") for u in uses), var
    api_env = compose["services"]["api"]["environment"]
    assert api_env["NORMLAB_AUTH"] == "required"
    assert "USER normlab" in (ROOT / "Dockerfile").read_text()
    if shutil.which("docker-compose"):
        bare = subprocess.run(["docker-compose", "config"], cwd=ROOT, capture_output=True,
                              env={"PATH": "/usr/bin:/bin"})
        assert bare.returncode != 0
        ok = subprocess.run(["docker-compose", "config", "-q"], cwd=ROOT, capture_output=True,
                            env={"PATH": "/usr/bin:/bin", "POSTGRES_PASSWORD": "p" * 20,
                                 "NORMLAB_ADMIN_KEY": "k" * 40})
        assert ok.returncode == 0, ok.stderr


INJECTIONS = ["' OR '1'='1", "'; DROP TABLE experiments; --", "\" OR 1=1 --", "%' --",
              "1; DELETE FROM metric_points", "x') UNION SELECT * FROM api_keys --"]


@pytest.mark.parametrize("attack", INJECTIONS)
def test_sql_injection_in_every_string_parameter(client: TestClient, settings: Settings,
                                                 attack: str) -> None:
    experiment = client.post(f"{API}/experiments", json=SMALL).json()["id"]
    insert(settings, experiment, [MetricPoint("loss", s, 1, 1.0 / s, 0.0) for s in range(1, 50)])
    probes = [
        ("GET", "/experiments", {"name": attack}), ("GET", "/experiments", {"tag": attack}),
        ("GET", "/experiments", {"status": attack}), ("GET", "/experiments", {"cursor": attack}),
        ("GET", f"/experiments/{experiment}/metrics", {"names": attack}),
        ("GET", f"/experiments/{experiment}/metrics/{attack}/series", {}),
        ("GET", "/compare", {"ids": attack}),
        ("GET", "/compare", {"ids": experiment, "names": attack}),
        ("GET", f"/experiments/{attack}", {}),
    ]
    for method, path, params in probes:
        response = client.request(method, f"{API}{path}", params=params)
        assert response.status_code < 500, (path, params, response.text)
        if response.status_code == 200 and "items" in response.json():
            assert response.json()["items"] == []
    hostile = client.post(f"{API}/experiments", json={**SMALL, "name": attack, "tags": [attack]})
    assert hostile.status_code == 422
    keyed = client.post(f"{API}/experiments", json=SMALL, headers={"Idempotency-Key": attack})
    assert keyed.status_code == 202
    # Nothing was lost or changed.
    listed = client.get(f"{API}/experiments").json()["items"]
    assert experiment in [e["id"] for e in listed]
    page = client.get(f"{API}/experiments/{experiment}/metrics", params={"names": "loss"}).json()
    assert len(page["items"]) == 49
