"""Sending jobs to workers. Only the experiment id travels; the worker reads the rest."""

from __future__ import annotations

import logging
import uuid
from typing import Protocol

from celery import Celery

from app import backlog
from app.core.config import Settings

log = logging.getLogger(__name__)


class Dispatcher(Protocol):
    def send(self, experiment_id: uuid.UUID, queue: str) -> None: ...

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


class CeleryDispatcher:
    def __init__(self, settings: Settings) -> None:
        from worker.celery_app import TASK_NAME, create_celery

        self.settings = settings
        self.app: Celery = create_celery(settings)
        self.task_name = TASK_NAME

    def send(self, experiment_id: uuid.UUID, queue: str) -> None:
        self.app.send_task(self.task_name, args=[str(experiment_id)], queue=queue)

    def waiting(self, delivered_s: float) -> set[uuid.UUID]:
        if self.settings.broker_url is None:
            return backlog.in_folder(self.settings.queue_dir / "messages", QUEUES, self.task_name)
        return backlog.in_redis(self.settings.broker_url, QUEUES, self.task_name, delivered_s)

    def ping(self) -> None:
        if self.settings.embedded:
            if not self.settings.queue_dir.is_dir():
                raise RuntimeError(f"queue folder {self.settings.queue_dir} is missing")
            return
        with self.app.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
