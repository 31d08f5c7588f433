"""Celery tasks: thin wrappers around ``worker.runner``. Workers load `worker.tasks:celery_app`."""

from __future__ import annotations

import uuid

from app.core.config import get_settings
from app.dispatch import CeleryDispatcher
from worker.celery_app import TASK_NAME, create_celery
from worker.runner import execute

celery_app = create_celery(get_settings())


@celery_app.task(name=TASK_NAME, bind=True)
def run_experiment(self: object, experiment_id: str) -> str:
    settings = get_settings()
    hostname = getattr(getattr(self, "request", None), "hostname", None) or "worker"
    return execute(uuid.UUID(experiment_id), settings=settings, worker_name=hostname,
                   dispatcher=lambda: CeleryDispatcher(settings))
