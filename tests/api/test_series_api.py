"""GET /experiments/{id}/metrics/{name}/series and GET /compare over HTTP (SQLite)."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.api.helpers import API, finish, insert, submit
from worker.training.result import MetricPoint

BUCKET_KEYS = {
    "bucket", "step_start", "step_end", "first", "last", "min", "max", "mean", "count",
    "nonfinite_count",
}  # fmt: skip


def series(name: str, values: dict[int, float]) -> list[MetricPoint]:
    """One metric's points: {step: value}."""
    return [MetricPoint(name, s, 1, v, 1000.0 + s) for s, v in values.items()]


def get_series(client: TestClient, experiment_id: str, name: str, **params: Any) -> Any:
    return client.get(f"{API}/experiments/{experiment_id}/metrics/{name}/series", params=params)


def ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()


def locs(response: Any) -> list[list[Any]]:
    assert response.status_code == 422, response.text
    return [item["loc"] for item in response.json()["detail"]]


# --- series ------------------------------------------------------------------------------------


def test_series_buckets_with_spike_and_non_finite(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    values = {s: 1.0 for s in range(1, 1001)}
    values[517] = 1e9
    values[3] = -5.0
    values[601], values[602], values[700] = math.nan, math.inf, -math.inf
    insert(settings, experiment["id"], series("loss", values))
    body = ok(get_series(client, experiment["id"], "loss", points=10))
    assert body["name"] == "loss" and body["points"] == 10 and body["raw"] is False
    assert (body["from_step"], body["to_step"]) == (1, 1000)
    buckets = body["buckets"]
    assert len(buckets) == 10
    assert all(set(b) == BUCKET_KEYS for b in buckets)
    assert [b["bucket"] for b in buckets] == list(range(10))
    assert [(b["step_start"], b["step_end"]) for b in buckets] == [
        (100 * i + 1, 100 * i + 100) for i in range(10)
    ]
    assert sum(b["count"] for b in buckets) == 1000
    assert max(b["max"] for b in buckets) == 1e9
    assert buckets[5]["max"] == 1e9 and buckets[0]["min"] == -5.0
    assert buckets[6]["nonfinite_count"] == 3 and buckets[6]["count"] == 100
    assert (buckets[6]["first"], buckets[6]["last"], buckets[6]["mean"]) == (1.0, 1.0, 1.0)
    assert sum(b["nonfinite_count"] for b in buckets) == 3
    # Counts are always integers; aggregates of finite values are numbers, never "NaN" strings.
    for b in buckets:
        assert isinstance(b["count"], int) and isinstance(b["nonfinite_count"], int)
        assert all(isinstance(b[k], float | int) for k in ("first", "last", "min", "max", "mean"))
    # Deterministic: the same request, the same bytes.
    again = get_series(client, experiment["id"], "loss", points=10)
    assert again.content == get_series(client, experiment["id"], "loss", points=10).content


def test_series_default_points_and_raw_mode(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    values = {s: float(s) for s in range(0, 1200, 2)}  # 600 points: more than the default 500
    insert(settings, experiment["id"], series("loss", values))
    body = ok(get_series(client, experiment["id"], "loss"))
    assert body["points"] == 500 and body["raw"] is False and len(body["buckets"]) <= 500
    assert sum(b["count"] for b in body["buckets"]) == 600
    body = ok(get_series(client, experiment["id"], "loss", points=600))
    assert body["raw"] is True
    assert [b["step_start"] for b in body["buckets"]] == sorted(values)
    assert all(
        b["count"] == 1 and b["first"] == b["max"] == b["step_start"] for b in body["buckets"]
    )


def test_series_all_non_finite_bucket_is_null_valued_with_counts(
    client: TestClient, settings: Settings
) -> None:
    experiment = submit(client, {})
    values = {s: 2.0 for s in range(1, 9)}
    values.update({5: math.nan, 6: math.inf, 7: -math.inf, 8: math.nan})
    insert(settings, experiment["id"], series("loss", values))
    body = ok(get_series(client, experiment["id"], "loss", points=2))
    assert body["raw"] is False
    bad = body["buckets"][1]
    assert (bad["step_start"], bad["step_end"], bad["count"], bad["nonfinite_count"]) == (
        5,
        8,
        4,
        4,
    )
    assert [bad[k] for k in ("first", "last", "min", "max", "mean")] == [None] * 5
    # raw mode: a NaN point is a bucket with null values and nonfinite_count 1, never a null count
    raw = ok(get_series(client, experiment["id"], "loss", points=8))
    assert raw["raw"] is True
    assert [b["nonfinite_count"] for b in raw["buckets"]] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert b"NaN" not in get_series(client, experiment["id"], "loss", points=8).content


def test_series_zoom_with_from_and_to(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    insert(settings, experiment["id"], series("loss", {s: float(s % 13) for s in range(1, 2001)}))
    body = ok(get_series(client, experiment["id"], "loss", points=50, from_step=101, to_step=600))
    assert (body["from_step"], body["to_step"]) == (101, 600)
    buckets = body["buckets"]
    assert buckets[0]["step_start"] == 101 and buckets[-1]["step_end"] == 600
    assert sum(b["count"] for b in buckets) == 500 and len(buckets) == 50
    body = ok(get_series(client, experiment["id"], "loss", points=50, from_step=1990))
    assert body["raw"] is True and [b["step_start"] for b in body["buckets"]] == list(
        range(1990, 2001)
    )
    body = ok(get_series(client, experiment["id"], "loss", from_step=5000, to_step=6000))
    assert body["buckets"] == []
    body = ok(get_series(client, experiment["id"], "loss", from_step=7, to_step=7))
    assert [(b["step_start"], b["first"]) for b in body["buckets"]] == [(7, 7.0)]


@pytest.mark.parametrize("name", ["grad_norm/hidden1", "bn/hidden1/running_var_mean",
                                  "act/outputs/p85"])
def test_series_metric_names_with_slashes(
    client: TestClient, settings: Settings, name: str
) -> None:
    experiment = submit(client, {})
    insert(settings, experiment["id"], series(name, {s: float(s) for s in range(1, 31)}))
    insert(settings, experiment["id"], series("grad_norm", {s: -1.0 for s in range(1, 31)}))
    body = ok(get_series(client, experiment["id"], name, points=3))
    assert body["name"] == name
    assert [(b["min"], b["max"], b["count"]) for b in body["buckets"]] == [
        (1.0, 10.0, 10), (11.0, 20.0, 10), (21.0, 30.0, 10),
    ]  # fmt: skip


def test_series_bounds_and_bad_inputs(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    insert(settings, experiment["id"], series("loss", {1: 1.0, 2: 2.0}))
    eid = experiment["id"]
    assert ["query", "points"] in locs(get_series(client, eid, "loss", points=0))
    assert ["query", "points"] in locs(get_series(client, eid, "loss", points=5001))
    assert ["query", "points"] in locs(get_series(client, eid, "loss", points="many"))
    assert ok(get_series(client, eid, "loss", points=1))["buckets"][0]["count"] == 2
    assert ok(get_series(client, eid, "loss", points=5000))["raw"] is True
    assert ["query", "from_step"] in locs(get_series(client, eid, "loss", from_step=10, to_step=9))
    assert ["query", "from_step"] in locs(get_series(client, eid, "loss", from_step=-1))
    assert ["query", "to_step"] in locs(get_series(client, eid, "loss", to_step="x"))
    assert get_series(client, eid, "bad name", points=5).status_code == 422
    assert get_series(client, eid, "x" * 129).status_code == 422
    assert ["path", "experiment_id"] in locs(get_series(client, "not-a-uuid", "loss"))


def test_series_unknown_experiment_and_unknown_metric_404(client: TestClient) -> None:
    missing = str(uuid.uuid4())
    response = get_series(client, missing, "loss")
    assert response.status_code == 404 and missing in response.json()["detail"]
    experiment = submit(client, {"model": {"hidden_layers": [8], "batch_norm": {"enabled": False}}})
    response = get_series(client, experiment["id"], "accuracy", points=10)
    detail = response.json()["detail"]
    assert response.status_code == 404
    assert "'accuracy'" in detail and "did you mean" in detail and "test_accuracy" in detail
    # Another config's names are unknown here: no hidden2, no BN statistics.
    for name in ("grad_norm/hidden2", "bn/hidden1/running_var_mean"):
        assert get_series(client, experiment["id"], name).status_code == 404
    # A name the config records but not written yet (no epoch has ended): empty, not an error.
    body = ok(get_series(client, experiment["id"], "val_accuracy", points=10))
    assert body["buckets"] == [] and body["raw"] is False and body["name"] == "val_accuracy"


# --- compare -----------------------------------------------------------------------------------


def compare(client: TestClient, **params: Any) -> Any:
    return client.get(f"{API}/compare", params=params)


def test_compare_shared_axis_aligned_buckets_and_config_diff(
    client: TestClient, settings: Settings
) -> None:
    base = submit(client, {"name": "cmp"})
    no_bn = submit(
        client,
        {"name": "cmp", "model": {"batch_norm": {"enabled": False}}, "clipping": {"mode": "norm"}},
    )
    clip = submit(client, {"name": "cmp", "clipping": {"mode": "value", "threshold": 0.5}})
    insert(settings, base["id"], series("loss", {s: 1.0 / s for s in range(1, 1001)}))
    insert(settings, no_bn["id"], series("loss", {s: 2.0 for s in range(1, 401)}))  # diverged early
    insert(settings, no_bn["id"], series("grad_norm/hidden1", {s: float(s) for s in range(1, 401)}))
    insert(settings, clip["id"], series("loss", {s: 3.0 for s in range(501, 1001, 5)}))
    ids = ",".join(e["id"] for e in (base, no_bn, clip))
    body = ok(compare(client, ids=ids, names="loss,grad_norm/hidden1", points=10))
    assert body["axis"] == {"from_step": 1, "to_step": 1000, "points": 10}
    first, second, third = body["experiments"]
    assert [e["id"] for e in body["experiments"]] == [base["id"], no_bn["id"], clip["id"]]
    assert first["config_diff"] == {}
    assert second["config_diff"] == {"model.batch_norm.enabled": False, "clipping.mode": "norm"}
    assert third["config_diff"] == {"clipping.mode": "value", "clipping.threshold": 0.5}
    assert first["name"] == "cmp" and first["status"] == "queued"
    # One grid for all: bucket k covers steps [100k+1, 100k+100] whatever the series' length.
    for experiment in body["experiments"]:
        assert set(experiment["series"]) == {"loss", "grad_norm/hidden1"}
        for buckets in experiment["series"].values():
            for b in buckets:
                assert set(b) == BUCKET_KEYS
                assert (b["step_start"] - 1) * 10 // 1000 == b["bucket"]
                assert (b["step_end"] - 1) * 10 // 1000 == b["bucket"]
    assert [b["bucket"] for b in first["series"]["loss"]] == list(range(10))
    assert [b["bucket"] for b in second["series"]["loss"]] == [0, 1, 2, 3]
    assert [b["bucket"] for b in third["series"]["loss"]] == [5, 6, 7, 8, 9]
    assert first["series"]["grad_norm/hidden1"] == []
    assert [b["max"] for b in second["series"]["grad_norm/hidden1"]] == [100.0, 200.0, 300.0, 400.0]
    # Not raw even when a series has fewer points than asked: the grid stays shared.
    small = ok(compare(client, ids=f"{no_bn['id']},{clip['id']}", names="loss", points=500))
    assert small["axis"] == {"from_step": 1, "to_step": 996, "points": 500}
    assert all(b["bucket"] == (b["step_start"] - 1) * 500 // 996
               for e in small["experiments"] for b in e["series"]["loss"])  # fmt: skip


def test_compare_default_names(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    insert(settings, experiment["id"], series("loss", {1: 1.0, 2: 2.0}))
    body = ok(compare(client, ids=f"{experiment['id']}"))
    assert len(body["experiments"]) == 1
    assert set(body["experiments"][0]["series"]) == {"loss"}
    assert body["axis"] == {"from_step": 1, "to_step": 2, "points": 500}


def test_compare_rejects_repeated_or_empty_ids_and_names(client: TestClient) -> None:
    a, b = submit(client, {})["id"], submit(client, {})["id"]
    for ids in (f"{a},{a}", f"{a}, {b},{a}", f"{a},", f",{a}", f"{a},,{b}"):
        response = compare(client, ids=ids)
        assert response.status_code == 422, ids
        assert response.json()["detail"][0]["loc"] == ["query", "ids"]
    assert "repeats" in compare(client, ids=f"{a},{a}").json()["detail"][0]["msg"]
    for names in ("", ",", " , "):
        assert ["query", "names"] in locs(compare(client, ids=f"{a},{b}", names=names))
    response = compare(client, ids=f"{a},{b}", names="loss,accuracy")
    assert ["query", "names"] in locs(response)
    assert "test_accuracy" in response.json()["detail"][0]["msg"]


def test_compare_knows_the_names_of_any_compared_config(client: TestClient) -> None:
    """BN statistics exist only with BN: comparing them with a run without BN is a question."""
    bn = submit(client, {})["id"]
    plain = submit(client, {"model": {"batch_norm": {"enabled": False}}})["id"]
    name = "bn/hidden1/running_var_mean"
    assert compare(client, ids=f"{bn},{plain}", names=name).status_code == 200
    assert compare(client, ids=plain, names=name).status_code == 422


def test_compare_carries_summaries_and_their_differences(
    client: TestClient, settings: Settings
) -> None:
    base = {"status": "succeeded", "steps": 100, "epochs_completed": 2, "duration_s": 10.0,
            "final_test_accuracy": 0.9, "best_val_accuracy": 0.92, "final_loss": 0.3}
    diverged = {"status": "diverged", "steps": 40, "epochs_completed": 0, "duration_s": 4.5,
                "final_loss": "NaN", "diverged_at_step": 40, "diverged_metric": "loss"}
    a = submit(client, {"name": "a"})["id"]
    b = submit(client, {"name": "b", "optimizer": {"learning_rate": 1.0}})["id"]
    queued = submit(client, {})["id"]
    finish(settings, a, summary=base)
    finish(settings, b, status="diverged", summary=diverged)
    body = ok(compare(client, ids=f"{a},{b},{queued}"))
    first, second, third = body["experiments"]
    assert first["summary"]["final_test_accuracy"] == 0.9
    assert first["summary_diff"]["steps"] == 0
    assert second["summary"]["status"] == "diverged"
    diff = second["summary_diff"]
    assert diff["steps"] == -60 and diff["duration_s"] == pytest.approx(-5.5)
    assert diff["diverged_at_step"] is None and diff["final_test_accuracy"] is None
    assert diff["final_loss"] == "NaN"  # NaN − 0.3: kept, as every non-finite value
    assert "diverged_metric" not in diff and "status" not in diff
    assert second["config_diff"] == {"optimizer.learning_rate": 1.0}  # not the name
    assert third["summary"] is None and third["summary_diff"] == {}


def test_compare_experiments_without_points(client: TestClient) -> None:
    a, b = submit(client, {}), submit(client, {"name": "other"})
    body = ok(compare(client, ids=f"{a['id']},{b['id']}", names="loss"))
    assert body["axis"]["from_step"] == body["axis"]["to_step"]
    assert [e["series"] for e in body["experiments"]] == [{"loss": []}, {"loss": []}]
    assert body["experiments"][1]["config_diff"] == {}  # the name is a label, not a difference


def test_compare_bad_inputs(client: TestClient) -> None:
    experiment = submit(client, {})
    eid = experiment["id"]
    assert ["query", "ids"] in locs(compare(client))
    assert ["query", "ids"] in locs(compare(client, ids=""))
    assert ["query", "ids"] in locs(compare(client, ids=" , "))
    assert ["query", "ids"] in locs(compare(client, ids=f"{eid},not-a-uuid"))
    assert ["query", "ids"] in locs(compare(client, ids=",".join([eid] * 2 + ["1234"])))
    too_many = ",".join(str(uuid.uuid4()) for _ in range(21))
    assert ["query", "ids"] in locs(compare(client, ids=too_many))
    twenty = ",".join([eid] + [str(uuid.uuid4()) for _ in range(19)])
    assert compare(client, ids=twenty).status_code == 404  # 20 is allowed; those are unknown
    assert ["query", "names"] in locs(compare(client, ids=eid, names="loss,bad name"))
    assert ["query", "points"] in locs(compare(client, ids=eid, points=0))
    assert ["query", "points"] in locs(compare(client, ids=eid, points=5001))


def test_compare_unknown_id_is_404(client: TestClient) -> None:
    experiment = submit(client, {})
    missing = str(uuid.uuid4())
    response = compare(client, ids=f"{experiment['id']},{missing}")
    assert response.status_code == 404
    assert missing in response.json()["detail"]
