"""app.backlog reads the ids a broker message holds: one for a single job, all for a group."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

from app import backlog

TASKS = ("normlab.run_experiment", "normlab.run_group")


def message(task: str, first_arg: object) -> bytes:
    body = base64.b64encode(json.dumps([[first_arg], {}, {}]).encode()).decode()
    return json.dumps({"headers": {"task": task}, "body": body,
                       "properties": {"body_encoding": "base64"}}).encode()


def test_a_single_and_a_group_message() -> None:
    one, *group = (uuid.uuid4() for _ in range(4))
    assert backlog.experiments_of(message(TASKS[0], str(one)), TASKS) == [one]
    assert backlog.experiments_of(message(TASKS[1], [str(i) for i in group]), TASKS) == group


def test_unknown_tasks_and_garbage_hold_nothing() -> None:
    assert backlog.experiments_of(message("other", str(uuid.uuid4())), TASKS) == []
    assert backlog.experiments_of(message(TASKS[1], ["not-a-uuid"]), TASKS) == []
    assert backlog.experiments_of(b"{not json", TASKS) == []


def test_the_folder_queue_counts_every_member_of_a_group(tmp_path: Path) -> None:
    group = [uuid.uuid4() for _ in range(3)]
    (tmp_path / "1.cpu.msg").write_bytes(message(TASKS[1], [str(i) for i in group]))
    assert backlog.in_folder(tmp_path, ("cpu",), TASKS) == set(group)
