"""GET /experiments/{id}/metrics and /metrics/names: non-finite values, filters, keyset pages."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.api.helpers import API, insert, submit
from worker.training.result import MetricPoint


def ragged_points(steps: int = 12) -> list[MetricPoint]:
    """loss every step, grad_norm on odd steps, val_accuracy every 4th: steps of 1 to 3 points."""
    points = []
    for step in range(1, steps + 1):
        epoch = (step - 1) // 4 + 1
        points.append(MetricPoint("loss", step, epoch, 2.0 / step, 1000.0 + step))
        if step % 2:
            points.append(MetricPoint("grad_norm", step, epoch, float(step), 1000.0 + step))
        if step % 4 == 0:
            points.append(MetricPoint("val_accuracy", step, epoch, 0.5, 1000.0 + step))
    return points


def get_metrics(client: TestClient, experiment_id: str, **params: Any) -> dict[str, Any]:
    response = client.get(f"{API}/experiments/{experiment_id}/metrics", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def key(item: dict[str, Any]) -> tuple[str, int]:
    return item["name"], item["step"]


def test_metrics_of_a_new_experiment_are_empty(client: TestClient) -> None:
    body = submit(client, {})
    assert get_metrics(client, body["id"]) == {"items": [], "next_after_step": -1,
                                               "has_more": False}
    response = client.get(f"{API}/experiments/{body['id']}/metrics/names")
    assert response.status_code == 200 and response.json() == []


def test_non_finite_values_are_strings_never_null(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    insert(settings, body["id"], [
        MetricPoint("loss", 1, 1, 0.5, 10.0),
        MetricPoint("loss", 2, 1, math.nan, 11.0),
        MetricPoint("loss", 3, 1, math.inf, 12.0),
        MetricPoint("loss", 4, 1, -math.inf, 13.0),
        MetricPoint("loss", 5, 1, 0.0, 14.0),
        MetricPoint("loss", 6, 1, -1e300, 15.0),
    ])  # fmt: skip
    response = client.get(f"{API}/experiments/{body['id']}/metrics")
    assert response.status_code == 200
    items = response.json()["items"]
    assert [item["value"] for item in items] == [0.5, "NaN", "Infinity", "-Infinity", 0.0, -1e300]
    assert b"null" not in response.content
    assert items[1] == {"name": "loss", "step": 2, "epoch": 1, "value": "NaN", "wall_time": 11.0}
    assert response.json()["next_after_step"] == 6
    names = client.get(f"{API}/experiments/{body['id']}/metrics/names").json()
    assert names == [{"name": "loss", "count": 6, "last_step": 6}]


def test_points_come_ordered_by_step_then_name(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    points = ragged_points()
    insert(settings, body["id"], list(reversed(points)))
    items = get_metrics(client, body["id"])["items"]
    assert [(i["step"], i["name"]) for i in items] == sorted((p.step, p.name) for p in points)
    assert len(items) == len(points)


def test_names_filter(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    insert(settings, body["id"], ragged_points())
    only_loss = get_metrics(client, body["id"], names="loss")["items"]
    assert {i["name"] for i in only_loss} == {"loss"} and len(only_loss) == 12
    two = get_metrics(client, body["id"], names="loss, val_accuracy")["items"]
    assert {i["name"] for i in two} == {"loss", "val_accuracy"} and len(two) == 15
    # A name the config records but that has no point yet: an empty page, not an error.
    assert get_metrics(client, body["id"], names="bn/outputs/running_var_mean", after_step=3) == {
        "items": [], "next_after_step": 3, "has_more": False,
    }  # fmt: skip


def test_metric_names_counts_and_last_step(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    insert(settings, body["id"], ragged_points())
    other = submit(client, {})
    insert(settings, other["id"], [MetricPoint("loss", 99, 9, 1.0, 1.0)])
    response = client.get(f"{API}/experiments/{body['id']}/metrics/names")
    assert response.status_code == 200
    assert response.json() == [
        {"name": "grad_norm", "count": 6, "last_step": 11},
        {"name": "loss", "count": 12, "last_step": 12},
        {"name": "val_accuracy", "count": 3, "last_step": 12},
    ]


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 5, 7])
def test_after_step_paging_walks_every_point_once_without_splitting_a_step(
    client: TestClient, settings: Settings, limit: int
) -> None:
    body = submit(client, {})
    points = ragged_points()
    insert(settings, body["id"], points)
    per_step: dict[int, int] = {}
    for p in points:
        per_step[p.step] = per_step.get(p.step, 0) + 1

    seen: list[tuple[str, int]] = []
    after = -1
    for _ in range(100):
        page = get_metrics(client, body["id"], after_step=after, limit=limit)
        if not page["items"]:
            assert page["next_after_step"] == after and not page["has_more"]
            break
        steps = [i["step"] for i in page["items"]]
        assert all(s > after for s in steps)
        for step in set(steps):  # every step on the page is whole
            assert steps.count(step) == per_step[step]
        # More than `limit` only when one step alone is bigger than a page.
        assert len(steps) <= limit or len(set(steps)) == 1
        assert page["next_after_step"] == steps[-1]
        assert page["has_more"] == (steps[-1] < 12)
        seen.extend(key(i) for i in page["items"])
        after = page["next_after_step"]
    else:
        pytest.fail("paging did not end")
    assert len(seen) == len(set(seen)) == len(points)
    assert set(seen) == {(p.name, p.step) for p in points}


def test_a_step_bigger_than_the_limit_comes_whole(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    names = [f"layer{i}/grad_norm" for i in range(5)]
    insert(settings, body["id"], [MetricPoint(n, s, 1, 1.0, 1.0) for s in (1, 2) for n in names])
    first = get_metrics(client, body["id"], limit=2)
    assert [key(i) for i in first["items"]] == [(n, 1) for n in sorted(names)]
    assert first["next_after_step"] == 1 and first["has_more"]
    second = get_metrics(client, body["id"], limit=2, after_step=1)
    assert [key(i) for i in second["items"]] == [(n, 2) for n in sorted(names)]
    assert not second["has_more"]
    assert get_metrics(client, body["id"], limit=2, after_step=2)["next_after_step"] == 2


def test_polling_while_points_arrive_misses_nothing(client: TestClient, settings: Settings) -> None:
    body = submit(client, {})
    points = ragged_points(20)
    seen: list[tuple[str, int]] = []
    after = -1
    for start in range(0, len(points), 7):  # the worker commits batches of whole steps ...
        batch_steps = {p.step for p in points[start : start + 7]}
        insert(settings, body["id"], [p for p in points if p.step in batch_steps])
        while True:  # ... and a client polls between the batches, as the README says
            page = get_metrics(client, body["id"], after_step=after, limit=3)
            seen.extend(key(i) for i in page["items"])
            after = page["next_after_step"]
            if not page["has_more"]:
                break
    assert sorted(seen) == sorted({(p.name, p.step) for p in points})
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize(
    ("params", "loc"),
    [
        ({"limit": 50_001}, ["query", "limit"]),
        ({"limit": 0}, ["query", "limit"]),
        ({"after_step": -2}, ["query", "after_step"]),
        ({"after_step": "x"}, ["query", "after_step"]),
        ({"names": "loss,bad name"}, ["query", "names"]),
        ({"names": "loss;drop table"}, ["query", "names"]),
        ({"names": ",".join(f"m{i}" for i in range(101))}, ["query", "names"]),
    ],
)
def test_bad_metric_queries_are_422(
    client: TestClient, params: dict[str, Any], loc: list[str]
) -> None:
    body = submit(client, {})
    response = client.get(f"{API}/experiments/{body['id']}/metrics", params=params)
    assert response.status_code == 422
    assert loc in [item["loc"] for item in response.json()["detail"]]


def test_limit_50000_is_allowed(client: TestClient) -> None:
    body = submit(client, {})
    assert get_metrics(client, body["id"], limit=50_000)["items"] == []


def test_metrics_of_unknown_experiment_404_bad_id_422(client: TestClient) -> None:
    missing = uuid.uuid4()
    for suffix in ("metrics", "metrics/names"):
        assert client.get(f"{API}/experiments/{missing}/{suffix}").status_code == 404
        assert client.get(f"{API}/experiments/nope/{suffix}").status_code == 422


def test_the_cursor_round_trips_when_caught_up(client: TestClient, settings: Settings) -> None:
    """The README's loop: send back next_after_step unchanged, at once while has_more."""
    body = submit(client, {})
    insert(settings, body["id"], ragged_points(4))
    page = get_metrics(client, body["id"], after_step=-1)
    assert page["next_after_step"] == 4 and not page["has_more"]
    for _ in range(2):  # caught up: the cursor comes back as sent, and sending it again works
        page = get_metrics(client, body["id"], after_step=page["next_after_step"])
        assert page == {"items": [], "next_after_step": 4, "has_more": False}
    insert(settings, body["id"], [MetricPoint("loss", 5, 2, 0.1, 1.0)])
    page = get_metrics(client, body["id"], after_step=page["next_after_step"])
    assert [key(i) for i in page["items"]] == [("loss", 5)] and page["next_after_step"] == 5


def test_empty_or_unknown_names_are_422_listing_the_known_ones(client: TestClient) -> None:
    body = submit(client, {"model": {"hidden_layers": [8, 8]}})
    url = f"{API}/experiments/{body['id']}/metrics"
    for names in ("", ",", " , "):
        response = client.get(url, params={"names": names})
        assert response.status_code == 422, names
        assert response.json()["detail"][0]["loc"] == ["query", "names"]
    response = client.get(url, params={"names": "loss,accuracy,grad_norm/hidden9"})
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "'accuracy' (did you mean" in message and "'grad_norm/hidden9'" in message
    assert "'loss'" not in message.split(";")[0]  # a known name is not blamed
    for known in ("test_accuracy", "grad_norm/hidden2", "act/outputs/p50", "bn/hidden1/"):
        assert known in message
    # Known names not written yet are not errors (no epoch has ended).
    assert get_metrics(client, body["id"], names="val_accuracy,act/hidden2/p15")["items"] == []
