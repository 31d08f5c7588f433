# ruff: noqa: F811
"""Fused group jobs on real processes, Redis and Postgres: every guarantee of a single
experiment holds per member (SIGKILL → resumed, gapless, equal to an uninterrupted run; one
member cancelled → the others finish; a study runs fused)."""

from __future__ import annotations

import signal
from typing import Any

import httpx
import pytest

from tests.database import truncate_all
from tests.integration.conftest import TERMINAL, all_points, get_json, wait_status
from tests.integration.test_faults import (  # noqa: F401  (stack: the fixture)
    RESCUER,
    Stack,
    assert_gapless,
    stack,
)

# Small enough for a loaded 2-core machine, long enough to interrupt after a checkpoint.
BASE: dict[str, Any] = {
    "dataset": {"name": "synthetic", "synthetic": {"samples": 3000, "features": 64}},
    "model": {"hidden_layers": [64, 32]},
    "training": {"epochs": 10, "batch_size": 32},
    "resources": {"device": "cpu"},
}


def spec(name: str, lrs: list[float], base: dict[str, Any] = BASE) -> dict[str, Any]:
    return {"name": name, "base": base, "seeds": 1,
            "factors": {"optimizer.learning_rate": lrs}}


@pytest.fixture(autouse=True)
def _empty(stack: Stack, postgres_url: str) -> None:
    truncate_all(postgres_url)  # (migrated by the stack) quotas count what others left queued


def submit_study(stack: Stack, body: dict[str, Any]) -> list[str]:
    """The members' ids, in cell order."""
    response = stack.client.post("/api/v1/studies", json=body)
    assert response.status_code == 202, response.text
    items = get_json(stack.client, "/api/v1/experiments", study_id=response.json()["id"],
                     limit=200)["items"]
    return [m["id"] for m in sorted(items, key=lambda m: m["study"]["cell"])]


def losses(client: httpx.Client, experiment_id: str) -> list[float]:
    return [p["value"] for p in all_points(client, experiment_id, names="loss")]


def finished(stack: Stack, ids: list[str]) -> list[dict[str, Any]]:
    return [wait_status(stack.client, i, TERMINAL) for i in ids]


def test_sigkill_mid_group_resumes_every_member_gapless(stack: Stack) -> None:
    lrs = [0.02, 0.05, 0.1]
    victim = stack.worker("victim")
    ids = submit_study(stack, spec("killed", lrs))
    for experiment_id in ids:
        stack.wait_epochs(experiment_id, 2)
    assert "a fused group of 3" in victim.log.read_text()
    victim.stop(signal.SIGKILL)  # the whole process group: parent, job, writers, reconciler
    rescuer = stack.worker("rescuer", **RESCUER)
    done = finished(stack, ids)
    for member in done:
        assert member["status"] == "succeeded", member
        assert member["attempt"] == 2 and member["worker"].startswith("rescuer@")
        assert_gapless(stack.client, member)
    log = rescuer.log.read_text()
    assert all(f"re-sent {i}" in log for i in ids)

    # The same members uninterrupted: every point equal (float32 through the same kernels).
    reference = submit_study(stack, spec("whole", lrs))
    for resumed, whole in zip(done, finished(stack, reference), strict=True):
        assert whole["status"] == "succeeded"
        assert resumed["summary"]["steps"] == whole["summary"]["steps"]
        assert losses(stack.client, resumed["id"]) == pytest.approx(
            losses(stack.client, whole["id"]), rel=1e-4)


def test_cancelling_one_member_leaves_the_others_running(stack: Stack) -> None:
    stack.worker("w")
    ids = submit_study(stack, spec("one-cancelled", [0.02, 0.05, 0.1]))
    stack.wait_epochs(ids[0], 1)
    response = stack.client.post(f"/api/v1/experiments/{ids[0]}/cancel")
    assert response.status_code == 202
    cancelled, *others = finished(stack, ids)
    assert cancelled["status"] == "cancelled"
    epochs = BASE["training"]["epochs"]
    assert cancelled["summary"]["epochs_completed"] < epochs
    steps = [p["step"] for p in all_points(stack.client, ids[0], names="loss")]
    assert steps == list(range(1, cancelled["summary"]["steps"] + 1))
    for member in others:
        assert member["status"] == "succeeded" and member["attempt"] == 1
        assert_gapless(stack.client, member)
        assert member["summary"]["steps"] > cancelled["summary"]["steps"]


def test_a_study_runs_as_one_fused_group(stack: Stack) -> None:
    worker = stack.worker("fused")
    small = {**BASE, "training": {"epochs": 2, "batch_size": 64}}
    # The API's dispatcher groups them: 5 fusable members, at most 8 a group on cpu.
    ids = submit_study(stack, spec("fused", [0.01, 0.02, 0.05, 0.1, 0.2], base=small))
    for member in finished(stack, ids):
        assert member["status"] == "succeeded", member
        assert_gapless(stack.client, member)
    log = worker.log.read_text()
    assert "a fused group of 5" in log
    assert all(log.count(f"claimed {i}") == 1 for i in ids)
