"""app.dispatch.plan_groups and the study dispatcher: fusable members go out as fused groups."""

from __future__ import annotations

import uuid
from typing import Any

from app.core.config import Settings
from app.dispatch import plan_groups
from app.studies.service import dispatch_members
from tests.api.helpers import FakeDispatcher
from worker.training.presets import build_config


def config(lr: float = 0.1, seed: int = 0, width: int = 32, device: str = "cpu") -> dict[str, Any]:
    return build_config({
        "dataset": {"name": "digits"}, "model": {"hidden_layers": [width]},
        "optimizer": {"learning_rate": lr}, "training": {"seed": seed},
        "resources": {"device": device},
    }).model_dump(mode="json")


def members(*configs: dict[str, Any]) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    return [(uuid.uuid4(), c) for c in configs]


def test_fusable_members_are_grouped_in_chunks_of_fuse_max() -> None:
    items = members(*(config(lr=0.01 * (i + 1), seed=i) for i in range(5)))
    jobs = plan_groups(Settings(fuse_max=2), items)
    ids = [i for i, _ in items]
    assert jobs == [("cpu", ids[0:2]), ("cpu", ids[2:4]), ("cpu", ids[4:5])]


def test_only_fusable_members_share_a_group() -> None:
    items = members(config(width=32), config(width=64), config(width=32, lr=0.2),
                    config(device="cuda"), config(device="cuda", seed=3))
    ids = [i for i, _ in items]
    assert plan_groups(Settings(fuse_max=8), items) == [
        ("cpu", [ids[0], ids[2]]), ("cpu", [ids[1]]), ("gpu", [ids[3], ids[4]])]


def test_fuse_max_one_sends_every_member_alone() -> None:
    items = members(config(seed=1), config(seed=2))
    assert plan_groups(Settings(fuse_max=1), items) == [("cpu", [items[0][0]]),
                                                         ("cpu", [items[1][0]])]


def test_the_default_group_size_depends_on_the_queue() -> None:
    assert (Settings().fuse_max_for("cpu"), Settings().fuse_max_for("gpu")) == (8, 32)
    assert Settings(fuse_max=3).fuse_max_for("gpu") == 3


def test_an_invalid_stored_config_goes_alone() -> None:
    items = members(config(seed=1), {"model": {"hidden_layers": "nope"}}, config(seed=2))
    ids = [i for i, _ in items]
    assert plan_groups(Settings(), items) == [("cpu", [ids[1]]), ("cpu", [ids[0], ids[2]])]


def test_the_study_dispatcher_sends_groups_and_singles() -> None:
    dispatcher = FakeDispatcher()
    items = members(*(config(seed=i) for i in range(3)), config(width=64))
    assert dispatch_members(dispatcher, Settings(fuse_max=2), items) == 4
    ids = [i for i, _ in items]
    assert dispatcher.groups == [ids[0:2]]
    assert [i for i, _ in dispatcher.sent] == ids


def test_a_broker_error_counts_what_was_sent() -> None:
    dispatcher = FakeDispatcher()
    dispatcher.send_error = RuntimeError("broker down")
    assert dispatch_members(dispatcher, Settings(), members(config(seed=1), config(seed=2))) == 0
