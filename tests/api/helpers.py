"""Helpers shared by the API tests."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import update

from app.core.config import Settings
from app.db import lifecycle, metrics
from app.db.lifecycle import Lease
from app.db.models import Experiment
from app.db.session import session_scope
from worker.training.result import MetricPoint

API = "/api/v1"
FUZZ_CASES: Counter[str] = Counter()  # cases run per fuzzer (test_fuzz), for the summary


class FakeDispatcher:
    """Records every job sent; ``ping_error``/``send_error`` make the broker look down."""

    def __init__(self) -> None:
        self.sent: list[tuple[uuid.UUID, str]] = []
        self.groups: list[list[uuid.UUID]] = []  # fused groups, each also counted in ``sent``
        self.ping_error: Exception | None = None
        self.send_error: Exception | None = None

    def send(self, experiment_id: uuid.UUID, queue: str) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.sent.append((experiment_id, queue))

    def send_group(self, experiment_ids: Sequence[uuid.UUID], queue: str) -> None:
        if self.send_error is not None:
            raise self.send_error
        self.groups.append(list(experiment_ids))
        self.sent += [(experiment_id, queue) for experiment_id in experiment_ids]

    def ping(self) -> None:
        if self.ping_error is not None:
            raise self.ping_error

    def waiting(self, delivered_s: float) -> set[uuid.UUID]:
        """As if the broker still held every message sent."""
        return {experiment_id for experiment_id, _ in self.sent}


def submit(client: TestClient, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    response = client.post(f"{API}/experiments", json=body if body is not None else {}, **kwargs)
    assert response.status_code == 202, response.text
    return response.json()


def insert(settings: Settings, experiment_id: str, points: list[MetricPoint]) -> None:
    """Store metric points the way the worker's sink does."""
    with session_scope(settings.database_url) as session:
        metrics.insert_points(session, uuid.UUID(experiment_id), points)


def claim(settings: Settings, experiment_id: str) -> Lease:
    with session_scope(settings.database_url) as session:
        lease = lifecycle.claim(session, uuid.UUID(experiment_id), worker="test-worker")
    assert lease is not None
    return lease


def finish(settings: Settings, experiment_id: str, status: str = "succeeded", **kw: Any) -> None:
    """queued → running → ``status``, the way a worker does it."""
    lease = claim(settings, experiment_id)
    with session_scope(settings.database_url) as session:
        assert lifecycle.finish(session, lease, status=status, **kw)


Event = dict[str, Any]


def parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    """SSE frames → dicts of their fields; a comment line becomes {"comment": text}."""
    fields: Event = {}
    for line in lines:
        if line == "":
            if fields:
                yield fields
            fields = {}
        elif line.startswith(":"):
            yield {"comment": line[1:].strip()}
        else:
            key, _, value = line.partition(":")
            assert key in ("id", "event", "data", "retry"), line
            assert key not in fields, f"{key} twice in one event"
            fields[key] = value.removeprefix(" ")
    if fields:
        yield fields


def set_status(settings: Settings, experiment_id: str, status: str) -> None:
    """Change the status as the worker or the cancel endpoint would (the row only)."""
    with session_scope(settings.database_url) as session:
        session.execute(
            update(Experiment)
            .where(Experiment.id == uuid.UUID(experiment_id))
            .values(status=status, updated_at=datetime.now(UTC))
        )
