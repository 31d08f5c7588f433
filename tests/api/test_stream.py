"""GET /experiments/{id}/stream (Server-Sent Events) against SQLite, no worker: the tests write
points and status changes themselves while the client reads, each one in reply to what the
stream has delivered so far (a ``Script``), so the order of events never depends on timing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from app.api import sse
from app.api.routes import stream as stream_module
from app.core.config import Settings
from app.db import experiments
from app.db.session import session_scope
from tests.api.helpers import API, Event, insert, set_status, submit
from tests.api.helpers import parse_sse as parse
from tests.waiting import HANG_S
from worker.training.result import MetricPoint

Condition = Callable[[list[Event]], bool]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The API tests' settings (tests/api/conftest.py), with a stream that polls every 50 ms."""
    return settings.model_copy(update={"stream_poll_s": 0.05})


@pytest.fixture(autouse=True)
def quick_heartbeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """A heartbeat every 0.2 s: a silent stream still yields lines, so reads can time out."""
    monkeypatch.setattr(sse, "HEARTBEAT_S", 0.2)


def url(experiment_id: str) -> str:
    return f"{API}/experiments/{experiment_id}/stream"


class Script:
    """What the "worker" does while a client reads: each step's action runs once, in order, as
    soon as the events received so far satisfy its condition."""

    def __init__(self, *steps: tuple[Condition, Callable[[], object]]) -> None:
        self.steps = list(steps)

    def __call__(self, events: list[Event]) -> None:
        while self.steps and self.steps[0][0](events):
            self.steps.pop(0)[1]()


def read(
    client: TestClient,
    experiment_id: str,
    *,
    last_event_id: str | None = None,
    stop: Condition | None = None,
    script: Script | None = None,
) -> list[Event]:
    """Read events until the server closes the stream, or until ``stop(events)`` is true;
    after each event, ``script`` acts on what has arrived (and must have run to its end)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: list[Event] = []
    deadline = time.monotonic() + HANG_S  # only a hung stream is this slow
    with client.stream("GET", url(experiment_id), headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        for event in parse(response.iter_lines()):
            events.append(event)
            if script is not None:
                script(events)
            if stop is not None and stop(events):
                break
            assert time.monotonic() < deadline, f"stream still open after {HANG_S}s: {events}"
    assert script is None or not script.steps, f"the stream ended before {script.steps}"
    return events


def step_points(first: int, last: int, names: tuple[str, ...] = ("loss",)) -> list[MetricPoint]:
    return [
        MetricPoint(name, s, 1 + s // 10, s / 100, 1000.0 + s)
        for s in range(first, last + 1)
        for name in names
    ]


def claim(settings: Settings, experiment_id: str) -> None:
    set_status(settings, experiment_id, "running")


def of_kind(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.get("event") == kind]


def saw_status(status: str) -> Condition:
    return lambda events: any(
        json.loads(e["data"])["status"] == status for e in of_kind(events, "status")
    )


def sent_step(step: int) -> Condition:
    """The stream has delivered every point up to ``step``."""
    return lambda events: any(int(e["id"]) >= step for e in of_kind(events, "metrics"))


def of_kind_comment(events: list[Event]) -> list[str]:
    return [e["comment"] for e in events if "comment" in e]


def received(events: list[Event]) -> list[tuple[str, int]]:
    return [
        (p["name"], p["step"]) for e in of_kind(events, "metrics") for p in json.loads(e["data"])
    ]


def test_finished_experiment_sends_status_metrics_then_end(
    client: TestClient, settings: Settings
) -> None:
    experiment = submit(client, {})
    claim(settings, experiment["id"])
    points = step_points(1, 5, ("loss", "grad_norm/hidden1"))
    points.append(MetricPoint("loss", 6, 1, float("nan"), 1006.0))
    insert(settings, experiment["id"], points)
    set_status(settings, experiment["id"], "diverged")
    events = read(client, experiment["id"])  # returns: the server closed the stream
    assert events[0] == {"retry": "2000"}
    assert events[1] == {"event": "status", "data": '{"status": "diverged"}'}
    [batch] = of_kind(events, "metrics")
    assert batch["id"] == "6"  # the last step it holds
    data = json.loads(batch["data"])
    assert [(p["name"], p["step"]) for p in data] == [
        (name, s) for s in range(1, 6) for name in ("grad_norm/hidden1", "loss")
    ] + [("loss", 6)]
    assert set(data[0]) == {"name", "step", "epoch", "value", "wall_time"}
    assert data[-1]["value"] == "NaN"
    assert events[-1] == {"event": "end", "data": '{"status": "diverged"}'}
    assert [e.get("event") for e in events[1:]] == ["status", "metrics", "end"]


def test_live_stream_status_changes_batches_and_end(
    client: TestClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream_module, "BATCH", 5)  # small pages: several events per flush
    experiment = submit(client, {})
    eid = experiment["id"]
    names = ("grad_norm", "loss", "test_accuracy")

    def cancel_with_last_points() -> None:
        insert(settings, eid, step_points(41, 42, names))
        set_status(settings, eid, "cancelled")

    script = Script(
        (saw_status("queued"), lambda: claim(settings, eid)),
        # Ten whole steps per commit, each commit once the stream has sent the previous one.
        *[
            (saw_status("running") if first == 1 else sent_step(first - 1),
             lambda first=first: insert(settings, eid, step_points(first, first + 9, names)))
            for first in range(1, 40, 10)
        ],
        (sent_step(40), lambda: set_status(settings, eid, "cancelling")),
        (saw_status("cancelling"), cancel_with_last_points),
    )
    events = read(client, eid, script=script)
    statuses = [json.loads(e["data"])["status"] for e in of_kind(events, "status")]
    assert statuses == ["queued", "running", "cancelling", "cancelled"]
    got = received(events)
    assert got == [(n, s) for s in range(1, 43) for n in names]  # in order, once each
    for event in of_kind(events, "metrics"):
        steps = [p["step"] for p in json.loads(event["data"])]
        assert int(event["id"]) == steps[-1] == max(steps)
        assert len(steps) <= 5 or len(set(steps)) == 1
        assert len(steps) % len(names) == 0  # a batch never splits a step
    assert len(of_kind(events, "metrics")) >= 42 * 3 // 5
    assert events[-1] == {"event": "end", "data": '{"status": "cancelled"}'}
    assert of_kind(events, "end") == [events[-1]]


def test_last_event_id_resumes_without_gap_or_duplicate(
    client: TestClient, settings: Settings
) -> None:
    experiment = submit(client, {})
    eid = experiment["id"]
    claim(settings, eid)
    names = ("loss", "grad_norm")
    insert(settings, eid, step_points(1, 10, names))
    first = read(client, eid, stop=lambda ev: bool(of_kind(ev, "metrics")))  # then drop it
    last_id = of_kind(first, "metrics")[-1]["id"]
    assert last_id == "10"
    insert(settings, eid, step_points(11, 25, names))  # arrives while disconnected

    def finish() -> None:
        insert(settings, eid, step_points(26, 30, names))
        set_status(settings, eid, "succeeded")

    # Once the resumed stream has caught up, the run writes its last points and ends.
    second = read(client, eid, last_event_id=last_id, script=Script((sent_step(25), finish)))
    assert of_kind(second, "status")[0]["data"] == '{"status": "running"}'
    union = received(first) + received(second)
    assert sorted(union) == sorted((n, s) for s in range(1, 31) for n in names)
    assert len(union) == len(set(union))
    assert min(s for _, s in received(second)) == 11
    assert of_kind(second, "end")


@pytest.mark.parametrize(
    ("header", "first_step"),
    [("3", 4), ("0", 1), ("abc", 1), ("", 1), ("-2", 1), (" 5 ", 6), ("9" * 30, 7)],
)
def test_last_event_id_values(
    client: TestClient, settings: Settings, header: str, first_step: int
) -> None:
    experiment = submit(client, {})
    claim(settings, experiment["id"])
    insert(settings, experiment["id"], step_points(1, 6))
    set_status(settings, experiment["id"], "succeeded")
    events = read(client, experiment["id"], last_event_id=header)
    assert [s for _, s in received(events)] == list(range(first_step, 7))
    assert of_kind(events, "end")


def test_resume_after_the_last_step_sends_nothing_again(
    client: TestClient, settings: Settings
) -> None:
    experiment = submit(client, {})
    claim(settings, experiment["id"])
    insert(settings, experiment["id"], step_points(1, 6))
    set_status(settings, experiment["id"], "succeeded")
    events = read(client, experiment["id"], last_event_id="6")
    assert of_kind(events, "metrics") == []
    assert [e.get("event") for e in events[1:]] == ["status", "end"]


def test_heartbeat_comment_on_a_quiet_stream(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    claim(settings, experiment["id"])
    events = read(client, experiment["id"], stop=lambda ev: len(of_kind_comment(ev)) >= 2)
    assert of_kind_comment(events) == ["heartbeat", "heartbeat"]
    assert of_kind(events, "status")[0]["data"] == '{"status": "running"}'
    assert not of_kind(events, "end")


def test_unknown_experiment_404_bad_id_422(client: TestClient) -> None:
    missing = str(uuid.uuid4())
    response = client.get(url(missing))
    assert response.status_code == 404
    assert missing in response.json()["detail"]
    assert client.get(url("not-a-uuid")).status_code == 422


def test_queued_then_cancelled_without_points(client: TestClient, settings: Settings) -> None:
    experiment = submit(client, {})
    eid = experiment["id"]

    def cancel() -> None:
        with session_scope(settings.database_url) as session:
            assert experiments.request_cancel(session, uuid.UUID(eid)) == "cancelled"

    events = read(client, eid, script=Script((saw_status("queued"), cancel)))
    assert [(e.get("event"), e.get("data")) for e in events if "event" in e] == [
        ("status", '{"status": "queued"}'),
        ("status", '{"status": "cancelled"}'),
        ("end", '{"status": "cancelled"}'),
    ]
