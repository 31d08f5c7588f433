"""Presets, health and readiness, and the OpenAPI document."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from app.core.config import Settings
from app.main import create_app
from tests.api.helpers import API, FakeDispatcher, submit
from worker.training.presets import build_config

ROUTES = {
    ("post", f"{API}/experiments"),
    ("get", f"{API}/experiments"),
    ("get", f"{API}/experiments/{{experiment_id}}"),
    ("post", f"{API}/experiments/{{experiment_id}}/cancel"),
    ("delete", f"{API}/experiments/{{experiment_id}}"),
    ("get", f"{API}/experiments/{{experiment_id}}/metrics"),
    ("get", f"{API}/experiments/{{experiment_id}}/metrics/names"),
    ("get", f"{API}/experiments/{{experiment_id}}/checkpoint"),
    ("get", f"{API}/experiments/{{experiment_id}}/model"),
    ("get", f"{API}/presets"),
    ("get", f"{API}/healthz"),
    ("get", f"{API}/readyz"),
}


def test_presets(client: TestClient) -> None:
    response = client.get(f"{API}/presets")
    assert response.status_code == 200
    presets = {p["name"]: p for p in response.json()}
    assert set(presets) == {"geron-bn", "geron-clip", "ioffe-mnist"}
    for name, preset in presets.items():
        assert preset["description"]
        assert preset["config"] == build_config({}, name).model_dump(mode="json")
    assert presets["geron-clip"]["config"]["clipping"] == {"mode": "value", "threshold": 1.0}
    assert presets["ioffe-mnist"]["config"]["model"]["init_std"] == 0.01


def test_healthz(client: TestClient) -> None:
    for path in (f"{API}/healthz", "/healthz"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


def test_readyz_ok(client: TestClient) -> None:
    for path in (f"{API}/readyz", "/readyz"):
        response = client.get(path)
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}


def test_readyz_503_when_the_broker_is_down(client: TestClient, dispatcher: FakeDispatcher) -> None:
    dispatcher.ping_error = ConnectionError("redis refused the connection")
    response = client.get(f"{API}/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert "redis refused" in body["checks"]["broker"]


def test_readyz_503_when_the_database_is_not_migrated(settings: Settings) -> None:
    """Without the lifespan (no `with`), nothing migrates the SQLite file: not ready."""
    client = TestClient(create_app(settings, dispatcher=FakeDispatcher()))
    response = client.get(f"{API}/readyz")
    assert response.status_code == 503
    assert "normlab migrate" in response.json()["checks"]["database"]


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_openapi_documents_every_route(client: TestClient) -> None:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    schema = response.json()
    documented = {
        (method, path)
        for path, operations in schema["paths"].items()
        for method in operations
    }  # fmt: skip
    assert documented >= ROUTES, ROUTES - documented
    for method, path in ROUTES:
        operation = schema["paths"][path][method]
        assert operation.get("summary") or operation.get("description"), (method, path)
    # Every $ref resolves: the config's sub-models are published.
    components = schema["components"]["schemas"]
    for ref in _refs(schema):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in components, ref
    assert client.get("/docs").status_code == 200


def test_openapi_submission_body_has_preset_tags_and_an_example(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    post = schema["paths"][f"{API}/experiments"]["post"]
    content = post["requestBody"]["content"]["application/json"]
    properties = content["schema"]["properties"]
    assert {"preset", "tags", "name", "dataset", "model", "optimizer", "training"} <= set(
        properties
    )
    assert properties["tags"]["type"] == "array"
    assert content["example"]["preset"] == "geron-bn"
    assert {"202", "409", "413", "422"} <= set(post["responses"])
    experiment = schema["paths"][f"{API}/experiments/{{experiment_id}}"]
    assert "404" in experiment["get"]["responses"]
    assert {"204", "404", "409"} <= set(experiment["delete"]["responses"])
    cancel = schema["paths"][f"{API}/experiments/{{experiment_id}}/cancel"]["post"]
    assert {"202", "404", "409"} <= set(cancel["responses"])


def test_presets_over_http_say_their_dataset(client: TestClient) -> None:
    presets = {p["name"]: p for p in client.get("/api/v1/presets").json()}
    assert presets["geron-bn"]["dataset"] == "mnist"
    assert presets["geron-bn"]["needs_download"] is True
    assert presets["geron-bn"]["offline_dataset"] == "mnist_5k"
    response = submit(client, {"preset": "geron-bn", "dataset": {"name": "mnist_5k"}})
    assert response["config"]["dataset"]["name"] == "mnist_5k"
