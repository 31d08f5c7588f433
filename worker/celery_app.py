"""The Celery app. The broker carries only experiment ids; the database is the source of truth.

CUDA must never be initialized in the worker's parent process (forked children would inherit a
broken context): nothing here touches torch.cuda, NVML-based probing keeps ``is_available()``
harmless, and each child runs one job (``worker_max_tasks_per_child=1``) so GPU memory is
returned to the driver when the job ends.
"""

from __future__ import annotations

import os

from celery import Celery
from celery.signals import worker_process_init

from app.core.config import Settings
from app.db.session import dispose_after_fork

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

TASK_NAME = "normlab.run_experiment"
QUEUES = ("gpu", "cpu")


def create_celery(settings: Settings) -> Celery:
    app = Celery("normlab")
    if settings.broker_url is None:
        # Embedded mode: a filesystem queue on this machine, no Redis needed.
        folder = settings.queue_dir
        for sub in ("messages", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        app.conf.broker_url = "filesystem://"
        app.conf.broker_transport_options = {
            "data_folder_in": str(folder / "messages"),
            "data_folder_out": str(folder / "messages"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    else:
        app.conf.broker_url = settings.broker_url
        app.conf.broker_transport_options = {"visibility_timeout": settings.visibility_timeout_s}
    app.conf.update(
        task_acks_late=True,  # a job lost with its worker is redelivered...
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # ...and long jobs are not hoarded by one worker
        worker_max_tasks_per_child=1,
        task_ignore_result=True,  # results live in the database
        task_default_queue="cpu",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app


@worker_process_init.connect
def _after_fork(**_: object) -> None:
    dispose_after_fork()
