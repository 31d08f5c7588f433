"""Study routes on SQLite and Postgres: submit, members, results, paging, cancel, delete,
idempotency, and bad input that creates nothing."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.config import Settings
from app.db import keys, lifecycle, metrics
from app.db.models import Experiment, Study
from app.db.session import session_scope
from app.main import create_app
from app.studies.spec import example_spec
from tests.api.helpers import API, FakeDispatcher, claim, finish, set_status
from worker.training.result import MetricPoint

Client = tuple[TestClient, Settings, FakeDispatcher]


@pytest.fixture
def sc(db_url: str, tmp_path: Path) -> Iterator[Client]:
    settings = Settings(database_url=db_url, data_dir=tmp_path / "data",
                        artifacts_dir=tmp_path / "art")
    dispatcher = FakeDispatcher()
    with TestClient(create_app(settings, dispatcher=dispatcher)) as client:
        yield client, settings, dispatcher


def spec(seeds: int = 8, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(example_spec())
    body["base"]["training"]["epochs"] = 2
    body.update(seeds=seeds, **changes)
    return body


def counts(settings: Settings) -> tuple[int, int]:
    with session_scope(settings.database_url) as session:
        return (int(session.scalar(select(func.count()).select_from(Study)) or 0),
                int(session.scalar(select(func.count()).select_from(Experiment)) or 0))


def members(client: TestClient, study_id: str) -> list[dict[str, Any]]:
    page = client.get(f"{API}/experiments", params={"study_id": study_id, "limit": 200})
    assert page.status_code == 200
    return sorted(page.json()["items"], key=lambda e: (e["study"]["cell"], e["study"]["seed"]))


def finish_all(settings: Settings, items: list[dict[str, Any]]) -> None:
    for e in items:
        cell, seed = e["study"]["cell"], e["study"]["seed"]
        if cell == 0 and seed == 0:
            finish(settings, e["id"], "diverged", summary={"status": "diverged"})
        else:
            acc = 0.1 + 0.8 * cell + 0.001 * seed
            finish(settings, e["id"], summary={"status": "succeeded", "final_test_accuracy": acc})


def test_a_study_is_its_members_and_its_results(sc: Client) -> None:
    client, settings, dispatcher = sc
    response = client.post(f"{API}/studies", json=spec())
    assert response.status_code == 202, response.text
    study = response.json()
    assert study["n_members"] == 16 and study["progress"]["by_status"] == {"queued": 16}
    assert response.headers["location"] == f"/api/v1/studies/{study['id']}"
    items = members(client, study["id"])
    assert len(items) == 16 and len(dispatcher.sent) == 16
    assert {e["id"] for e in items} == {str(i) for i, _ in dispatcher.sent}
    assert items[9]["config"]["model"]["batch_norm"]["enabled"] is True
    assert items[9]["config"]["training"]["seed"] == 1
    one = client.get(f"{API}/experiments/{items[3]['id']}").json()  # every route shows it
    assert one["study"] == {"id": study["id"], "cell": 0, "seed": 3}

    running = client.get(f"{API}/studies/{study['id']}").json()
    assert running["progress"]["terminal"] is False and running["contrasts"][0]["n_pairs"] == 0
    finish_all(settings, items)
    first = client.get(f"{API}/studies/{study['id']}")
    second = client.get(f"{API}/studies/{study['id']}")
    assert first.status_code == 200 and first.content == second.content  # deterministic
    assert client.get(f"{API}/studies/{study['id']}",
                      headers={"If-None-Match": first.headers["etag"]}).status_code == 304
    doc = first.json()
    assert doc["progress"]["terminal"] and doc["progress"]["by_status"] == {
        "diverged": 1, "succeeded": 15}
    assert doc["cells"][0]["n_diverged"] == 1 and doc["cells"][0]["n_left_out"] == 1
    [contrast] = doc["contrasts"]
    assert contrast["n_pairs"] == 8 and contrast["n_wins"] == 8
    assert contrast["wilcoxon_p"] == pytest.approx(2 / 256)
    assert "raises final_test_accuracy by 0.8" in contrast["verdict"]
    assert doc["methods"]["mean_ci"].startswith("BCa bootstrap")


def test_steps_to_reads_the_epoch_metric(sc: Client) -> None:
    client, settings, _ = sc
    body = spec(seeds=2, response={"metric": "steps_to", "of": "val_accuracy",
                                   "threshold": 0.5})
    study = client.post(f"{API}/studies", json=body).json()
    for e in members(client, study["id"]):
        lease = claim(settings, e["id"])
        cell, seed = e["study"]["cell"], e["study"]["seed"]
        values = [0.2, 0.6, 0.7] if cell == 1 else [0.2, 0.3, 0.4 + 0.2 * seed]
        with session_scope(settings.database_url) as session:
            metrics.insert_points(session, lease.experiment_id, [
                MetricPoint("val_accuracy", 10 * (k + 1), k + 1, v, 0.0)
                for k, v in enumerate(values)])
        with session_scope(settings.database_url) as session:
            lifecycle.finish(session, lease, status="succeeded", summary={"status": "succeeded"})
    doc = client.get(f"{API}/studies/{study['id']}").json()
    assert doc["response"]["label"] == "steps to val_accuracy >= 0.5"
    low, high = doc["cells"]
    assert low["n_left_out"] == 1 and low["mean"] == 30.0  # seed 0 never reached: censored
    assert high["mean"] == 20.0
    assert doc["contrasts"][0]["n_wins"] == 2


def test_keyset_paging_and_cancel_and_delete(sc: Client) -> None:
    client, settings, _ = sc
    ids = [client.post(f"{API}/studies", json=spec(seeds=1, name=f"s{i}")).json()["id"]
           for i in range(3)]
    page = client.get(f"{API}/studies", params={"limit": 2}).json()
    assert [s["id"] for s in page["items"]] == ids[::-1][:2] and page["next_cursor"]
    rest = client.get(f"{API}/studies", params={"limit": 2, "cursor": page["next_cursor"]}).json()
    assert [s["id"] for s in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert client.get(f"{API}/studies", params={"cursor": "nope"}).status_code == 422

    study_id = ids[0]
    first, _ = members(client, study_id)
    claim(settings, first["id"])
    assert client.delete(f"{API}/studies/{study_id}").status_code == 409
    cancelled = client.post(f"{API}/studies/{study_id}/cancel").json()
    assert (cancelled["cancelled"], cancelled["cancelling"]) == (1, 1)
    statuses = {e["status"] for e in members(client, study_id)}
    assert statuses == {"cancelled", "cancelling"}
    assert client.delete(f"{API}/studies/{study_id}").status_code == 409
    set_status(settings, first["id"], "cancelled")
    assert client.delete(f"{API}/studies/{study_id}").status_code == 204
    assert client.get(f"{API}/studies/{study_id}").status_code == 404
    assert members(client, study_id) == [] and counts(settings) == (2, 4)
    assert client.get(f"{API}/studies/{uuid.uuid4()}").status_code == 404


def test_idempotency_key(sc: Client) -> None:
    client, settings, dispatcher = sc
    headers = {"Idempotency-Key": "study-1"}
    a = client.post(f"{API}/studies", json=spec(seeds=2), headers=headers)
    b = client.post(f"{API}/studies", json=spec(seeds=2), headers=headers)
    assert a.status_code == b.status_code == 202 and a.json()["id"] == b.json()["id"]
    assert len(dispatcher.sent) == 4 and counts(settings) == (1, 4)
    big = spec(seeds=8)  # 16 members: a retry must not be refused for its own 16 active ones
    first = client.post(f"{API}/studies", json=big, headers={"Idempotency-Key": "big"})
    retry = client.post(f"{API}/studies", json=big, headers={"Idempotency-Key": "big"})
    assert first.status_code == retry.status_code == 202
    assert first.json()["id"] == retry.json()["id"]
    assert client.post(f"{API}/studies", json=spec(seeds=3), headers=headers).status_code == 409


BAD: list[tuple[Any, int, str]] = [
    (spec(factors={"model.batchnorm.enabled": [False, True]}), 422, "model.batch_norm.enabled"),
    (spec(factors={}), 422, "factors"),
    (spec(factors={"optimizer.learning_rate": [0.1, 0.1]}), 422, "repeats"),
    (spec(factors={"training.seed": [1, 2]}), 422, "training.seed"),
    (spec(seeds=0), 422, "seeds"),
    (spec(seeds=101), 422, "seeds"),
    (spec(response={"metric": "accuracy"}), 422, "response"),
    (spec(factors={"training.batch_size": [1, 50]}), 422, "training.batch_size=1"),
    (spec(factors={"optimizer.learning_rate": [0.5, 20.0]}), 422, "learning_rate"),
    (spec(base={"preset": "nope"}), 422, "unknown preset"),
    (spec(seeds=100, factors={"optimizer.learning_rate": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]}), 413,
     "600 members"),
    (spec(seeds=11), 429, "adds 22"),
    ([1, 2], 422, "valid dictionary"),
]


@pytest.mark.parametrize(("body", "status", "needle"), BAD)
def test_bad_input_is_a_4xx_and_creates_nothing(sc: Client, body: Any, status: int,
                                                needle: str) -> None:
    client, settings, dispatcher = sc
    response = client.post(f"{API}/studies", json=body)
    assert response.status_code == status and needle in response.text, response.text
    assert counts(settings) == (0, 0) and dispatcher.sent == []


def test_malformed_json_is_a_400(sc: Client) -> None:
    client, settings, _ = sc
    response = client.post(f"{API}/studies", content=b'{"name": ',
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "malformed JSON" in response.text
    assert counts(settings) == (0, 0)


def test_a_non_finite_threshold_is_refused(sc: Client) -> None:
    client, settings, _ = sc
    text = json.dumps(spec(response={"metric": "steps_to", "of": "val_accuracy",
                                     "threshold": 0.9})).replace("0.9}", "NaN}")
    response = client.post(f"{API}/studies", content=text,
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 422 and "threshold" in response.text
    assert counts(settings) == (0, 0)


def test_owners_see_only_their_own_studies(client: TestClient, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        alice, bob = keys.create(session, owner="alice"), keys.create(session, owner="bob")
        admin = keys.create(session, owner="root", admin=True)

    def h(key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    study_id = client.post(f"{API}/studies", json=spec(seeds=1), headers=h(alice)).json()["id"]
    for method, path in [("get", ""), ("get", "/results.csv"), ("get", "/curves"),
                         ("post", "/cancel"), ("delete", "")]:
        response = client.request(method.upper(), f"{API}/studies/{study_id}{path}", headers=h(bob))
        assert response.status_code == 404, (method, path, response.text)
    assert client.get(f"{API}/studies", headers=h(bob)).json()["items"] == []
    assert client.get(f"{API}/studies/{study_id}", headers=h(admin)).status_code == 200
    assert len(client.get(f"{API}/studies", headers=h(admin)).json()["items"]) == 1
    assert client.get(f"{API}/studies").status_code == 401


def test_curves_csv_and_stream(sc: Client) -> None:
    client, settings, _ = sc
    study = client.post(f"{API}/studies", json=spec(seeds=2)).json()
    items = members(client, study["id"])
    for e in items:
        lease = claim(settings, e["id"])
        cell, seed = e["study"]["cell"], e["study"]["seed"]
        with session_scope(settings.database_url) as session:
            metrics.insert_points(session, lease.experiment_id, [
                MetricPoint("val_accuracy", 10 * k, k, 0.1 * k + 0.5 * cell + 0.01 * seed, 0.0)
                for k in (1, 2, 3)])
            status = "diverged" if cell == 0 and seed == 0 else "succeeded"
            lifecycle.finish(session, lease, status=status, summary={"status": status})
    curves = client.get(f"{API}/studies/{study['id']}/curves",
                        params={"metric": "val_accuracy", "points": 3}).json()
    assert (curves["from_step"], curves["to_step"]) == (10, 30)
    first = curves["cells"][0]["buckets"]
    assert [b["members"] for b in first] == [2, 2, 2]
    assert first[0]["mean"] == pytest.approx(0.105) and first[0]["min"] == pytest.approx(0.1)
    assert first[0]["ci_low"] < 0.105 < first[0]["ci_high"]
    assert [(b["step_start"], b["step_end"]) for b in first] == [(10, 16), (17, 23), (24, 30)]

    csv_text = client.get(f"{API}/studies/{study['id']}/results.csv").text
    lines = csv_text.splitlines()
    assert lines[0].startswith("experiment_id,cell,model.batch_norm.enabled,seed,status,response")
    assert len(lines) == 5 and ",diverged,,True," in lines[1]

    with client.stream("GET", f"{API}/studies/{study['id']}/stream") as response:
        body = "".join(response.iter_text())
    assert "event: progress" in body and "event: end" in body and '"terminal": true' in body
