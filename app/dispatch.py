"""Sending jobs to workers. Only experiment ids travel; the worker reads the rest.

A job is one experiment (``send``) or a fused group of them (``send_group``: one message with
the ids, trained as one stacked network, ``worker.group_runner``). ``plan_groups`` decides the
groups: fusable experiments (``fusion.fusable_groups``) in chunks of ``Settings.fuse_max_for``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from celery import Celery
from pydantic import ValidationError

from app import backlog
from app.core.config import Settings
from worker.training.config import ExperimentConfig
from worker.training.fusion import fusable_groups

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def send(self, experiment_id: uuid.UUID, queue: str) -> None: ...

    def send_group(self, experiment_ids: Sequence[uuid.UUID], queue: str) -> None:
        """One job for a fusable group (two or more experiments)."""

    def ping(self) -> None:
        """Raise if the broker is unreachable."""

    def waiting(self, delivered_s: float) -> set[uuid.UUID]:
        """The experiments the broker holds a message for (``app.backlog``): queued, or taken
        by a worker less than ``delivered_s`` ago. Raises if the broker is unreachable."""


QUEUES = ("gpu", "cpu")  # what queue_for can answer


def queue_for(device: str, settings: Settings) -> str:
    """The config's device routes the job: cuda* → gpu, cpu → cpu, auto → the configured default."""
    if device.startswith("cuda"):
        return "gpu"
    if device == "cpu":
        return "cpu"
    return settings.auto_queue


Job = tuple[str, list[uuid.UUID]]  # (queue, experiment ids): one message


def plan_groups(settings: Settings, experiments: Sequence[tuple[uuid.UUID, dict[str, Any]]],
                ) -> list[Job]:
    """The jobs that run ``experiments`` (id, stored config): fusable ones grouped, at most
    ``fuse_max_for(queue)`` a group, in first-seen order; the rest one job each."""
    by_queue: dict[str, list[tuple[uuid.UUID, ExperimentConfig]]] = {}
    jobs: list[Job] = []
    for experiment_id, raw in experiments:
        queue = queue_for(str(raw.get("resources", {}).get("device", "auto")), settings)
        try:
            config = ExperimentConfig.model_validate(raw)
        except ValidationError:  # its worker fails it with the reason, alone
            jobs.append((queue, [experiment_id]))
            continue
        by_queue.setdefault(queue, []).append((experiment_id, config))
    for queue, members in by_queue.items():
        groups = fusable_groups([c for _, c in members], settings.fuse_max_for(queue))
        jobs += [(queue, [members[i][0] for i in group]) for group in groups]
    return jobs


def send_job(dispatcher: Dispatcher, job: Job) -> None:
    queue, ids = job
    if len(ids) == 1:
        dispatcher.send(ids[0], queue)  # the solo path
    else:
        dispatcher.send_group(ids, queue)


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import GROUP_TASK_NAME, TASK_NAME, create_celery

        self.settings = settings
        self.app: Celery = create_celery(settings)
        self.task_name, self.group_task_name = TASK_NAME, GROUP_TASK_NAME

    def send(self, experiment_id: uuid.UUID, queue: str) -> None:
        self.app.send_task(self.task_name, args=[str(experiment_id)], queue=queue)

    def send_group(self, experiment_ids: Sequence[uuid.UUID], queue: str) -> None:
        self.app.send_task(self.group_task_name, args=[[str(i) for i in experiment_ids]],
                           queue=queue)

    def waiting(self, delivered_s: float) -> set[uuid.UUID]:
        tasks = (self.task_name, self.group_task_name)
        if self.settings.broker_url is None:
            return backlog.in_folder(self.settings.queue_dir / "messages", QUEUES, tasks)
        return backlog.in_redis(self.settings.broker_url, QUEUES, tasks, delivered_s)

    def ping(self) -> None:
        if self.settings.embedded:
            if not self.settings.queue_dir.is_dir():
                raise RuntimeError(f"queue folder {self.settings.queue_dir} is missing")
            return
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
