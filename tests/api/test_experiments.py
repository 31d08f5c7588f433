"""POST/GET/cancel/DELETE experiments and the checkpoint download, against the route table."""

from __future__ import annotations

import math
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.core.config import Settings, staged_path
from app.db.models import Experiment, MetricPoint
from app.db.session import session_scope
from tests.api.helpers import API, FakeDispatcher, claim, finish, insert, submit
from worker.training.config import ExperimentConfig
from worker.training.presets import build_config
from worker.training.result import MetricPoint as EnginePoint
from worker.training.result import TrainSummary

EXPERIMENT_FIELDS = {
    "id", "name", "tags", "status", "config", "created_at", "started_at", "finished_at",
    "device", "worker", "attempt", "dispatch_count", "error", "summary", "study",
}  # fmt: skip


def count_rows(settings: Settings, model: type) -> int:
    with session_scope(settings.database_url) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


# --- POST /experiments ------------------------------------------------------------------------


def test_submit_returns_202_location_and_the_experiment(
    client: TestClient, dispatcher: FakeDispatcher
) -> None:
    response = client.post(f"{API}/experiments", json={"name": "first", "tags": ["bn", "demo"]})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == EXPERIMENT_FIELDS
    uuid.UUID(body["id"])
    assert response.headers["location"] == f"{API}/experiments/{body['id']}"
    assert body["name"] == "first"
    assert body["dispatch_count"] == 1  # sent once, after the commit
    assert body["tags"] == ["bn", "demo"]
    assert body["status"] == "queued"
    assert body["attempt"] == 0
    assert body["started_at"] is body["finished_at"] is body["summary"] is None
    assert body["error"] is None and body["device"] is None and body["worker"] is None
    assert body["created_at"].endswith(("Z", "+00:00"))
    assert dispatcher.sent == [(uuid.UUID(body["id"]), "cpu")]
    # The Location header points at the experiment.
    assert client.get(response.headers["location"]).json() == body


def test_submit_normalizes_the_config_with_every_default(client: TestClient) -> None:
    body = submit(client, {"training": {"epochs": 3}})
    expected = ExperimentConfig.model_validate({"training": {"epochs": 3}}).model_dump(mode="json")
    assert body["config"] == expected
    assert body["config"]["training"] == {
        "epochs": 3, "batch_size": 50, "seed": 42, "max_steps": None, "log_every_steps": 1,
        "activation_stats_every_steps": None, "measure_prediction_cost": True,
    }  # fmt: skip
    assert body["config"]["model"]["batch_norm"]["decay"] == 0.99
    assert body["config"]["dataset"]["name"] == "digits"
    assert body["name"] == body["config"]["name"] == "experiment"


def test_preset_is_applied_underneath_the_user_fields(client: TestClient) -> None:
    body = submit(
        client,
        {"preset": "geron-clip", "dataset": {"name": "digits"}, "clipping": {"threshold": 0.5}},
    )
    config = body["config"]
    preset = build_config({}, "geron-clip").model_dump(mode="json")
    assert config["dataset"]["name"] == "digits"  # the user's field wins ...
    assert config["clipping"] == {"mode": "value", "threshold": 0.5}  # ... merged, not replaced
    assert config["model"] == preset["model"]  # the rest comes from the preset
    assert config["training"] == preset["training"]
    assert body["name"] == "geron-clip, modified"  # another threshold: not the preset's recipe
    assert "preset" not in config and "tags" not in config


def test_tags_are_deduplicated_and_sorted(client: TestClient) -> None:
    body = submit(client, {"tags": ["z", "a", "z", "m:1"]})
    assert body["tags"] == ["a", "m:1", "z"]


@pytest.mark.parametrize(
    ("device", "queue"), [("cpu", "cpu"), ("cuda", "gpu"), ("cuda:1", "gpu"), ("auto", "cpu")]
)
def test_device_routes_the_job(
    client: TestClient, dispatcher: FakeDispatcher, device: str, queue: str
) -> None:
    body = submit(client, {"resources": {"device": device}})
    assert dispatcher.sent == [(uuid.UUID(body["id"]), queue)]


def test_a_broker_error_still_queues_the_experiment(
    client: TestClient, dispatcher: FakeDispatcher
) -> None:
    dispatcher.send_error = ConnectionError("broker down")
    body = submit(client, {})
    assert client.get(f"{API}/experiments/{body['id']}").json()["status"] == "queued"


def test_idempotency_key_same_body_returns_the_same_experiment(
    client: TestClient, dispatcher: FakeDispatcher
) -> None:
    headers = {"Idempotency-Key": "key-1"}
    first = submit(client, {"name": "a", "training": {"epochs": 2}}, headers=headers)
    # The same body with its keys in another order is the same request.
    second = client.post(
        f"{API}/experiments", json={"training": {"epochs": 2}, "name": "a"}, headers=headers
    )
    assert second.status_code == 202
    assert second.json()["id"] == first["id"]
    assert second.headers["location"] == f"{API}/experiments/{first['id']}"
    assert len(dispatcher.sent) == 1
    assert len(client.get(f"{API}/experiments").json()["items"]) == 1


def test_idempotency_key_with_another_body_is_409(
    client: TestClient, dispatcher: FakeDispatcher
) -> None:
    headers = {"Idempotency-Key": "key-2"}
    submit(client, {"name": "a"}, headers=headers)
    response = client.post(f"{API}/experiments", json={"name": "b"}, headers=headers)
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["detail"]
    assert len(dispatcher.sent) == 1
    # Another key, or none, makes a new experiment.
    submit(client, {"name": "a"}, headers={"Idempotency-Key": "key-3"})
    submit(client, {"name": "a"})
    assert len(dispatcher.sent) == 3


# --- GET /experiments -------------------------------------------------------------------------


def test_list_filters_by_status_tag_and_name(client: TestClient, settings: Settings) -> None:
    a = submit(client, {"name": "alpha", "tags": ["bn"]})
    b = submit(client, {"name": "beta", "tags": ["bn", "clip"]})
    c = submit(client, {"name": "alpha", "tags": ["clip"]})
    claim(settings, b["id"])

    def ids(**params: str) -> list[str]:
        response = client.get(f"{API}/experiments", params=params)
        assert response.status_code == 200, response.text
        assert set(response.json()) == {"items", "next_cursor"}
        return [item["id"] for item in response.json()["items"]]

    assert ids() == [c["id"], b["id"], a["id"]]
    assert ids(status="queued") == [c["id"], a["id"]]
    assert ids(status="running") == [b["id"]]
    assert ids(status="succeeded") == []
    assert ids(tag="bn") == [b["id"], a["id"]]
    assert ids(tag="clip", status="queued") == [c["id"]]
    assert ids(name="alpha") == [c["id"], a["id"]]
    assert ids(name="gamma") == []
    listed = client.get(f"{API}/experiments", params={"name": "beta"}).json()["items"][0]
    assert listed == client.get(f"{API}/experiments/{b['id']}").json()
    assert listed["tags"] == ["bn", "clip"]


def test_list_cursor_pagination_newest_first_without_gap_or_duplicate(client: TestClient) -> None:
    created = [submit(client, {"name": f"e{i}"})["id"] for i in range(7)]
    pages: list[list[str]] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 3}
        if cursor is not None:
            params["cursor"] = cursor
        response = client.get(f"{API}/experiments", params=params)
        assert response.status_code == 200
        page = response.json()
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert len(pages) < 10
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for page in pages for i in page] == created[::-1]


def test_list_a_full_last_page_has_no_cursor(client: TestClient) -> None:
    for i in range(3):
        submit(client, {"name": f"e{i}"})
    page = client.get(f"{API}/experiments", params={"limit": 3}).json()
    assert len(page["items"]) == 3 and page["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 201}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
        ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
        ({"cursor": "MjAyMC0wMS0wMXx4"}, ["query", "cursor"]),  # "2020-01-01|x"
        ({"status": "sleeping"}, ["query", "status"]),
        ({"tag": "no spaces"}, ["query", "tag"]),
    ],
)
def test_list_bad_query_is_422(client: TestClient, params: dict, loc: list[str]) -> None:
    submit(client, {})
    response = client.get(f"{API}/experiments", params=params)
    assert response.status_code == 422
    assert loc in [item["loc"] for item in response.json()["detail"]]


def test_list_limit_bounds_are_inclusive(client: TestClient) -> None:
    submit(client, {})
    assert client.get(f"{API}/experiments", params={"limit": 1}).status_code == 200
    assert client.get(f"{API}/experiments", params={"limit": 200}).status_code == 200


# --- GET /experiments/{id} --------------------------------------------------------------------


def test_get_one_200_404_422(client: TestClient) -> None:
    body = submit(client, {"name": "one"})
    response = client.get(f"{API}/experiments/{body['id']}")
    assert response.status_code == 200
    assert response.json() == body
    missing = uuid.uuid4()
    response = client.get(f"{API}/experiments/{missing}")
    assert response.status_code == 404
    assert str(missing) in response.json()["detail"]
    response = client.get(f"{API}/experiments/not-a-uuid")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "experiment_id"]


def test_get_shows_worker_fields_and_a_non_finite_summary(
    client: TestClient, settings: Settings
) -> None:
    body = submit(client, {})
    summary = TrainSummary(
        status="diverged", steps=7, final_loss=math.nan, diverged_at_step=7,
        diverged_metric="loss", max_grad_norm=math.inf, samples_per_s=12.5,
    )  # fmt: skip
    finish(settings, body["id"], status="diverged", summary=summary.model_dump(mode="json"))
    response = client.get(f"{API}/experiments/{body['id']}")
    assert response.status_code == 200
    got = response.json()
    assert got["status"] == "diverged"
    assert got["worker"] == "test-worker" and got["attempt"] == 1
    assert got["started_at"] is not None and got["finished_at"] is not None
    assert got["summary"]["final_loss"] == "NaN"
    assert got["summary"]["max_grad_norm"] == "Infinity"
    assert got["summary"]["diverged_at_step"] == 7
    assert got["summary"]["diverged_metric"] == "loss"
    for field in ("steps", "epochs_completed", "final_test_accuracy", "best_val_accuracy",
                  "duration_s", "samples_per_s"):  # fmt: skip
        assert field in got["summary"]


# --- POST /experiments/{id}/cancel ------------------------------------------------------------


def test_cancel_queued_is_cancelled_then_409(client: TestClient) -> None:
    body = submit(client, {})
    response = client.post(f"{API}/experiments/{body['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    again = client.post(f"{API}/experiments/{body['id']}/cancel")
    assert again.status_code == 409
    assert "cancelled" in again.json()["detail"]


def test_cancel_running_is_cancelling(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    lease = claim(settings, body["id"])
    response = client.post(f"{API}/experiments/{body['id']}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    assert response.json()["finished_at"] is None
    # Asking again while the worker winds down changes nothing and is not an error.
    again = client.post(f"{API}/experiments/{body['id']}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "cancelling"
    # The worker's success now ends as cancelled.
    with session_scope(settings.database_url) as session:
        from app.db import lifecycle

        lifecycle.finish(session, lease, status="succeeded")
    assert client.get(f"{API}/experiments/{body['id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize("status", ["succeeded", "diverged", "failed"])
def test_cancel_finished_is_409(client: TestClient, settings: Settings, status: str) -> None:
    body = submit(client, {})
    finish(settings, body["id"], status=status)
    response = client.post(f"{API}/experiments/{body['id']}/cancel")
    assert response.status_code == 409
    assert status in response.json()["detail"]
    assert client.get(f"{API}/experiments/{body['id']}").json()["status"] == status


def test_cancel_unknown_404_and_bad_id_422(client: TestClient) -> None:
    assert client.post(f"{API}/experiments/{uuid.uuid4()}/cancel").status_code == 404
    assert client.post(f"{API}/experiments/123/cancel").status_code == 422


# --- DELETE /experiments/{id} -----------------------------------------------------------------


def test_delete_finished_removes_it_its_metrics_and_checkpoint(
    client: TestClient, settings: Settings
) -> None:
    keep = submit(client, {"name": "keep"})
    gone = submit(client, {"name": "gone", "tags": ["x"]})
    for body in (keep, gone):
        insert(settings, body["id"], [EnginePoint("loss", s, 1, 1.0 / s, 1.0) for s in range(1, 6)])
    finish(settings, gone["id"])
    checkpoint = settings.checkpoint_path(gone["id"])
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"weights")
    staged = staged_path(checkpoint)  # left by a job killed before it could publish it
    staged.write_bytes(b"newer weights")
    assert count_rows(settings, MetricPoint) == 10

    response = client.delete(f"{API}/experiments/{gone['id']}")
    assert response.status_code == 204
    assert response.content == b""
    assert client.get(f"{API}/experiments/{gone['id']}").status_code == 404
    assert client.get(f"{API}/experiments/{gone['id']}/metrics").status_code == 404
    assert count_rows(settings, MetricPoint) == 5  # only the other experiment's points remain
    assert count_rows(settings, Experiment) == 1
    assert not checkpoint.exists() and not staged.exists()
    assert client.get(f"{API}/experiments", params={"tag": "x"}).json()["items"] == []
    assert client.delete(f"{API}/experiments/{gone['id']}").status_code == 404


def test_delete_a_cancelled_experiment(client: TestClient) -> None:
    body = submit(client, {})
    client.post(f"{API}/experiments/{body['id']}/cancel")
    assert client.delete(f"{API}/experiments/{body['id']}").status_code == 204


@pytest.mark.parametrize("state", ["queued", "running", "cancelling"])
def test_delete_unfinished_is_409(client: TestClient, settings: Settings, state: str) -> None:
    body = submit(client, {})
    if state != "queued":
        claim(settings, body["id"])
    if state == "cancelling":
        client.post(f"{API}/experiments/{body['id']}/cancel")
    response = client.delete(f"{API}/experiments/{body['id']}")
    assert response.status_code == 409
    assert state in response.json()["detail"]
    assert client.get(f"{API}/experiments/{body['id']}").json()["status"] == state


def test_delete_unknown_404_and_bad_id_422(client: TestClient) -> None:
    response = client.delete(f"{API}/experiments/{uuid.uuid4()}")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]
    assert client.delete(f"{API}/experiments/xyz").status_code == 422


# --- GET /experiments/{id}/checkpoint ---------------------------------------------------------


def test_checkpoint_404_until_written_then_200(client: TestClient, settings: Settings) -> None:
    body = submit(client, {"name": "ckpt"})
    url = f"{API}/experiments/{body['id']}/checkpoint"
    response = client.get(url)
    assert response.status_code == 404
    assert "checkpoint" in response.json()["detail"]
    path = settings.checkpoint_path(body["id"])
    path.parent.mkdir(parents=True)
    payload = bytes(range(256)) * 10
    path.write_bytes(payload)
    response = client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == payload
    assert "ckpt" in response.headers["content-disposition"]
    assert client.get(f"{API}/experiments/{uuid.uuid4()}/checkpoint").status_code == 404


@pytest.mark.parametrize(("name", "filename", "filename_star"), [
    ("../../x/bob-run", "x_bob-run", None),
    ("..", "", None),
    (".hidden run", "hidden_run", None),
    ("résumé (lr=0.1)", "r_sum_lr_0.1", "r%C3%A9sum%C3%A9_lr_0.1"),
])
def test_checkpoint_download_name_is_a_safe_token_plus_the_id(
    client: TestClient, settings: Settings, name: str, filename: str, filename_star: str | None
) -> None:
    body = submit(client, {"name": name})
    path = settings.checkpoint_path(body["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"weights")
    disposition = client.get(f"{API}/experiments/{body['id']}/checkpoint").headers[
        "content-disposition"]
    stem = "-".join(filter(None, (filename, body["id"])))
    expected = f'attachment; filename="{stem}.safetensors"'
    if filename_star is not None:
        expected += f"; filename*=UTF-8''{filename_star}-{body['id']}.safetensors"
    assert disposition == expected


def test_stored_config_leaves_out_what_does_not_apply(client: TestClient) -> None:
    digits = submit(client, {"dataset": {"name": "digits", "synthetic": {"samples": 500}}})
    assert "synthetic" not in digits["config"]["dataset"]
    stored = client.get(f"{API}/experiments/{digits['id']}").json()
    assert "synthetic" not in stored["config"]["dataset"]
    synthetic = submit(client, {"dataset": {"name": "synthetic"}})
    assert synthetic["config"]["dataset"]["synthetic"]["samples"] == 2000
    # Given where it does not apply, the block is still validated.
    response = client.post(f"{API}/experiments",
                           json={"dataset": {"name": "digits", "synthetic": {"samples": 5}}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "dataset", "synthetic", "samples"]


def test_a_modified_preset_says_so(client: TestClient) -> None:
    body = submit(client, {"preset": "geron-bn", "model": {"batch_norm": {"enabled": False}}})
    assert body["name"] == "geron-bn, modified"
    assert submit(client, {"preset": "geron-bn", "dataset": {"name": "digits"}})["name"] == (
        "geron-bn")
