"""Polling stays cheap: ETag / If-None-Match → 304 until something changes. CORS only when
configured (NORMLAB_CORS_ORIGINS), and then on every route, preflights included."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.config import Settings
from app.db.models import Experiment
from app.db.session import engine_for, session_scope
from app.main import create_app
from tests.api.helpers import API, FakeDispatcher, insert, set_status, submit
from worker.training.result import MetricPoint

ORIGIN = "http://dash.example"


def point(step: int, name: str = "loss") -> list[MetricPoint]:
    return [MetricPoint(name, step, 1, step / 10, 0.0)]


def paths(experiment_id: str) -> dict[str, str]:
    return {
        "experiment": f"{API}/experiments/{experiment_id}",
        "metrics": f"{API}/experiments/{experiment_id}/metrics",
        "series": f"{API}/experiments/{experiment_id}/metrics/loss/series?points=10",
        "compare": f"{API}/compare?ids={experiment_id}&names=loss",
    }


@pytest.mark.parametrize("kind", ["experiment", "metrics", "series", "compare"])
def test_if_none_match_gives_304_until_a_change(
    client: TestClient, settings: Settings, kind: str
) -> None:
    experiment = submit(client, {})
    eid = experiment["id"]
    insert(settings, eid, point(1))
    url = paths(eid)[kind]
    first = client.get(url)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('W/"') and tag.endswith('"')
    assert first.headers["cache-control"] == "no-cache"
    again = client.get(url)
    assert again.headers["etag"] == tag and again.content == first.content  # stable

    cached = client.get(url, headers={"If-None-Match": tag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == tag
    assert "content-type" not in cached.headers
    # Weak comparison, lists and "*" (RFC 9110): still nothing changed.
    for header in (tag.removeprefix("W/"), f'"other", {tag}', "*"):
        assert client.get(url, headers={"If-None-Match": header}).status_code == 304, header
    assert client.get(url, headers={"If-None-Match": 'W/"other"'}).status_code == 200

    # A change: a new metric point for the metric views, a status change for the experiment.
    if kind == "experiment":
        set_status(settings, eid, "running")
    else:
        insert(settings, eid, point(2))
    changed = client.get(url, headers={"If-None-Match": tag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != tag
    assert changed.content and changed.content != first.content
    assert client.get(url, headers={"If-None-Match": changed.headers["etag"]}).status_code == 304


def test_compare_etag_changes_when_any_experiment_changes(
    client: TestClient, settings: Settings
) -> None:
    a, b = submit(client, {}), submit(client, {})
    url = f"{API}/compare?ids={a['id']},{b['id']}&names=loss,grad_norm/hidden1"
    tag = client.get(url).headers["etag"]
    insert(settings, b["id"], point(7, name="grad_norm/hidden1"))
    response = client.get(url, headers={"If-None-Match": tag})
    assert response.status_code == 200 and response.headers["etag"] != tag
    tag = response.headers["etag"]
    set_status(settings, a["id"], "cancelled")  # status is part of the comparison
    assert client.get(url, headers={"If-None-Match": tag}).status_code == 200


def test_etag_differs_between_experiments_and_errors_have_none(client: TestClient) -> None:
    a, b = submit(client, {}), submit(client, {})
    assert (
        client.get(f"{API}/experiments/{a['id']}").headers["etag"]
        != client.get(f"{API}/experiments/{b['id']}").headers["etag"]
    )
    missing = client.get(f"{API}/experiments/{uuid.uuid4()}", headers={"If-None-Match": "*"})
    assert missing.status_code == 404 and "etag" not in missing.headers


# --- CORS ---------------------------------------------------------------------------------------


@pytest.fixture
def make_client(settings: Settings, tmp_path: Path) -> Iterator[Callable[[list[str]], TestClient]]:
    """An app with the API tests' settings and the given CORS origins (its own database)."""
    made: list[tuple[TestClient, str]] = []

    def make(origins: list[str]) -> TestClient:
        url = f"sqlite:///{tmp_path}/cors{len(made)}.db"
        configured = settings.model_copy(update={"database_url": url, "cors_origins": origins})
        test_client = TestClient(create_app(configured, dispatcher=FakeDispatcher()))
        test_client.__enter__()
        made.append((test_client, url))
        return test_client

    yield make
    for test_client, url in made:
        test_client.__exit__(None, None, None)
        engine_for(url).dispose()


def test_cors_headers_when_configured(make_client: Callable[[list[str]], TestClient]) -> None:
    client = make_client([ORIGIN])
    experiment = submit(client, {}, headers={"Origin": ORIGIN})
    for url in ("/healthz", *paths(experiment["id"]).values()):
        response = client.get(url, headers={"Origin": ORIGIN})
        assert response.status_code == 200, url
        assert response.headers["access-control-allow-origin"] == ORIGIN, url
    other = client.get("/healthz", headers={"Origin": "http://evil.example"})
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers
    # A 304 and an error still carry it, or the browser hides them from the dashboard.
    url = paths(experiment["id"])["experiment"]
    tag = client.get(url).headers["etag"]
    cached = client.get(url, headers={"Origin": ORIGIN, "If-None-Match": tag})
    assert cached.status_code == 304
    assert cached.headers["access-control-allow-origin"] == ORIGIN
    missing = client.get(f"{API}/experiments/{uuid.uuid4()}", headers={"Origin": ORIGIN})
    assert missing.status_code == 404
    assert missing.headers["access-control-allow-origin"] == ORIGIN


def test_cors_preflight(make_client: Callable[[list[str]], TestClient]) -> None:
    client = make_client([ORIGIN])
    experiment = submit(client, {})
    response = client.options(
        paths(experiment["id"])["experiment"],
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "If-None-Match, Last-Event-ID",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert "GET" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "if-none-match" in allowed and "last-event-id" in allowed
    post = client.options(
        f"{API}/experiments",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    assert post.status_code == 200 and "POST" in post.headers["access-control-allow-methods"]
    denied = client.options(
        f"{API}/experiments",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert denied.status_code == 400
    assert "access-control-allow-origin" not in denied.headers


def test_cors_on_the_event_stream(make_client: Callable[[list[str]], TestClient]) -> None:
    client = make_client([ORIGIN])
    experiment = submit(client, {})
    settings: Settings = client.app.state.settings
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Experiment)
            .where(Experiment.id == uuid.UUID(experiment["id"]))
            .values(status="cancelled")
        )
    url = f"{API}/experiments/{experiment['id']}/stream"
    with client.stream("GET", url, headers={"Origin": ORIGIN}) as response:
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == ORIGIN
        body = response.read().decode()
    assert "event: end" in body


def test_no_cors_headers_by_default(make_client: Callable[[list[str]], TestClient]) -> None:
    client = make_client([])
    experiment = submit(client, {})
    for url in ("/healthz", *paths(experiment["id"]).values()):
        response = client.get(url, headers={"Origin": ORIGIN})
        assert response.status_code == 200, url
        assert not [h for h in response.headers if h.startswith("access-control-")], url
    preflight = client.options(
        paths(experiment["id"])["experiment"],
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"},
    )
    assert preflight.status_code == 405
    assert not [h for h in preflight.headers if h.startswith("access-control-")]


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NORMLAB_CORS_ORIGINS", f"{ORIGIN}, http://other.example ,")
    assert Settings().cors_origins == [ORIGIN, "http://other.example"]
    monkeypatch.setenv("NORMLAB_CORS_ORIGINS", "")
    assert Settings().cors_origins == []
    monkeypatch.delenv("NORMLAB_CORS_ORIGINS")
    assert Settings().cors_origins == []


def test_cors_exposes_the_etag_to_other_origins(tmp_path: Path) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/c.db",
        data_dir=tmp_path / "d",
        artifacts_dir=tmp_path / "a",
        cors_origins=["http://dash.example"],
    )
    with TestClient(create_app(settings, FakeDispatcher())) as client:
        response = client.get("/api/v1/presets", headers={"Origin": "http://dash.example"})
    assert "etag" in response.headers["access-control-expose-headers"].lower()
