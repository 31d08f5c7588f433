"""Celery tasks: thin wrappers around ``worker.runner``. Workers load `worker.tasks:celery_app`."""

from __future__ import annotations

import uuid

from app.core.config import get_settings
from app.dispatch import CeleryDispatcher
from worker import exporter, verbosity  # noqa: F401  (the optional /metrics endpoint; quiet logs)
from worker.celery_app import GROUP_TASK_NAME, TASK_NAME, create_celery
from worker.group_runner import execute_group
from worker.runner import execute

celery_app = create_celery(get_settings())


def _preload() -> None:
    """Pay the slow first-use imports once, in the worker's parent: every job runs in a freshly
    forked child (one job per child), which inherits them instead of spending seconds on them.
    Only CPU objects are touched, so CUDA stays uninitialized in the parent."""
    import sklearn.datasets  # noqa: F401  (the digits loader)
    import torch

    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)  # imports torch._dynamo


_preload()


def _hostname(task: object) -> str:
    return getattr(getattr(task, "request", None), "hostname", None) or "worker"


def _run_experiment(self: object, experiment_id: str) -> str:
    settings = get_settings()
    return execute(uuid.UUID(experiment_id), settings=settings, worker_name=_hostname(self),
                   dispatcher=lambda: CeleryDispatcher(settings))


def _run_group(self: object, experiment_ids: list[str]) -> str:
    settings = get_settings()
    return execute_group([uuid.UUID(i) for i in experiment_ids], settings=settings,
                         worker_name=_hostname(self),
                         dispatcher=lambda: CeleryDispatcher(settings))


# Registered by a call, not a decorator: Celery is unannotated, and its decorator would make the
# function untyped to mypy.
# The gate (its strategy) refuses messages of experiments no longer queued before a job process is
# forked for them.
run_experiment = celery_app.task(name=TASK_NAME, bind=True,
                                 Strategy="worker.gate:strategy")(_run_experiment)
# A fused group of experiments (worker.group_runner): the ids of its members.
run_group = celery_app.task(name=GROUP_TASK_NAME, bind=True,
                            Strategy="worker.gate:strategy")(_run_group)
