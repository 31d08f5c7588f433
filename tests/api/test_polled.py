"""GET /experiments/{id} in the event loop (app.api.polled): the same answers as the general path,
never stale, and every unusual case (auth, other owners, errors) left to the general path."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from starlette.requests import Request

from app.api import polled
from app.api.auth import KEYS_SEEN
from app.api.deps import Caller, ExperimentAccess
from app.api.routes.experiments import _get_experiment
from app.cli.service import tcp_listener
from app.core.config import Settings
from app.db import keys, polling
from app.db.session import session_scope
from app.main import create_app
from tests.api.helpers import API, FakeDispatcher, claim, finish, submit
from tests.database import truncate_all
from tests.waiting import HANG_S


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Every test here on SQLite and on Postgres, where the fast path is asynchronous and
    coalesces identical polls."""
    KEYS_SEEN.forget(db_url)  # one Postgres database for all tests: forget earlier keys
    yield Settings(database_url=db_url, data_dir=tmp_path / "data", artifacts_dir=tmp_path / "art")
    KEYS_SEEN.forget(db_url)


def poller(client: TestClient) -> polled.Poller:
    found = client.app.state.poller  # type: ignore[attr-defined]
    assert isinstance(found, polled.Poller)
    return found


def general_path(client: TestClient, experiment_id: str, headers: dict[str, str]) -> bytes:
    """What the general path answers, called directly (no fast path)."""
    scope = {"type": "http", "app": client.app, "method": "GET", "path": "/", "query_string": b"",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
    caller = Caller(client.app.state.settings,  # type: ignore[attr-defined]
                    headers.get("Authorization"))
    access = ExperimentAccess(caller, uuid.UUID(experiment_id))
    return bytes(_get_experiment(access, Request(scope)).body)


def test_fast_answer_is_the_general_answer(client: TestClient) -> None:
    body = submit(client, {"preset": "geron-bn", "tags": ["zeta", "alpha", "mid"]})
    response = client.get(f"{API}/experiments/{body['id']}")
    assert response.status_code == 200
    assert uuid.UUID(body["id"]) in poller(client).cache  # answered by the fast path
    if poller(client).asynchronous:  # Postgres: on the loop's own psycopg connection
        assert poller(client).loop_connection.connection is not None
    assert response.content == general_path(client, body["id"], {})
    assert response.json()["tags"] == ["alpha", "mid", "zeta"]
    again = client.get(f"{API}/experiments/{body['id']}",
                       headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304 and again.headers["etag"] == response.headers["etag"]


def test_a_changed_row_is_never_served_stale(client: TestClient, settings: Settings) -> None:
    body = submit(client, {"preset": "geron-bn"})
    url = f"{API}/experiments/{body['id']}"
    first = client.get(url)
    assert first.json()["status"] == "queued"
    claim(settings, body["id"])
    running = client.get(url)
    assert running.json()["status"] == "running" and running.json()["worker"] == "test-worker"
    assert running.headers["etag"] != first.headers["etag"]
    client.post(f"{url}/cancel")
    assert client.get(url).json()["status"] == "cancelling"
    assert client.get(url).content == general_path(client, body["id"], {})


def test_a_finished_experiment_with_summary(client: TestClient, settings: Settings) -> None:
    body = submit(client, {"preset": "geron-bn"})
    finish(settings, body["id"], summary={"status": "succeeded", "steps": 3,
                                          "final_loss": "NaN"})
    response = client.get(f"{API}/experiments/{body['id']}")
    assert response.json()["summary"]["final_loss"] == "NaN"
    assert response.content == general_path(client, body["id"], {})


def test_missing_experiment_is_404(client: TestClient) -> None:
    response = client.get(f"{API}/experiments/{uuid.uuid4()}")
    assert response.status_code == 404 and response.json()["detail"]


def test_keys_owners_and_revocation(client: TestClient, settings: Settings) -> None:
    with session_scope(settings.database_url) as session:
        alice = keys.create(session, owner="alice")
        bob = keys.create(session, owner="bob")
        root = keys.create(session, owner="root", admin=True)
    h = {k: {"Authorization": f"Bearer {v}"} for k, v in
         {"alice": alice, "bob": bob, "root": root}.items()}
    body = submit(client, {"preset": "geron-bn"}, headers=h["alice"])
    url = f"{API}/experiments/{body['id']}"
    assert client.get(url).status_code == 401
    assert client.get(url, headers={"Authorization": "Bearer " + "x" * 40}).status_code == 401
    assert client.get(url, headers=h["bob"]).status_code == 404
    assert client.get(url, headers=h["root"]).status_code == 200
    own = client.get(url, headers=h["alice"])
    assert own.status_code == 200
    assert own.content == general_path(client, body["id"], h["alice"])
    with session_scope(settings.database_url) as session:
        keys.revoke(session, next(k.key_id for k in keys.list_keys(session) if k.owner == "alice"))
    assert client.get(url, headers=h["alice"]).status_code == 401  # at once


def test_a_key_created_elsewhere_closes_the_api_at_once(client: TestClient,
                                                        settings: Settings) -> None:
    body = submit(client, {"preset": "geron-bn"})
    url = f"{API}/experiments/{body['id']}"
    assert client.get(url).status_code == 200
    with session_scope(settings.database_url) as session:  # e.g. `normlab keys create`
        keys.create(session, owner="carol")
    assert client.get(url).status_code == 401


def test_database_errors_fall_back_to_the_general_path(client: TestClient,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    body = submit(client, {"preset": "geron-bn"})
    url = f"{API}/experiments/{body['id']}"
    assert client.get(url).status_code == 200
    fast = poller(client)

    def broken(*_: object, **__: object) -> None:
        raise OperationalError("SELECT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(fast, "_query", broken)
    response = client.get(url)  # the general path answers
    assert response.status_code == 200 and response.json()["id"] == body["id"]
    assert fast.down_until > 0 and fast.connection is None


def test_listener_gets_tcp_nodelay_on_accepted_connections() -> None:
    """uvicorn issue 3149: the multi-process listener must say IPPROTO_TCP, or asyncio leaves
    Nagle on for every accepted connection."""
    listener = tcp_listener("127.0.0.1", 0)
    assert listener.proto == socket.IPPROTO_TCP
    listener.listen()
    seen: list[int] = []

    async def main() -> None:
        accepted = asyncio.Event()

        def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
            accepted.set()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
        await asyncio.wait_for(accepted.wait(), HANG_S)
        writer.close()
        server.close()

    asyncio.run(main())
    assert seen and seen[0] != 0


def test_concurrent_first_polls_share_one_connection(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Polls of different experiments arriving together on a new app open one connection, not
    one each (only the last of which would have been kept)."""
    truncate_all(postgres_url)
    KEYS_SEEN.forget(postgres_url)
    settings = Settings(database_url=postgres_url, data_dir=tmp_path / "data",
                        artifacts_dir=tmp_path / "art")
    with TestClient(create_app(settings, dispatcher=FakeDispatcher())) as client:
        ids = [uuid.UUID(submit(client, {"preset": "geron-bn"})["id"]) for _ in range(8)]
    opened: list[str] = []
    connect = polling.connect_async
    fast = polled.Poller(settings)
    get = fast.loop_connection.get
    asking = 0
    everyone_asked = asyncio.Event()

    async def counted_get() -> Any:
        nonlocal asking
        asking += 1
        if asking == len(ids):
            everyone_asked.set()
        return await get()

    async def held_connect(url: str) -> Any:
        opened.append(url)
        await asyncio.wait_for(everyone_asked.wait(), HANG_S)  # every poll arrives meanwhile
        return await connect(url)

    monkeypatch.setattr(polling, "connect_async", held_connect)
    monkeypatch.setattr(fast.loop_connection, "get", counted_get)
    caller = Caller(settings, None)

    async def main() -> list[Any]:
        return await asyncio.gather(*(fast.read(caller, i) for i in ids))

    try:
        answers = asyncio.run(main())
        assert all(answer is not None for answer in answers)
        assert len(opened) == 1
    finally:
        fast.close()
