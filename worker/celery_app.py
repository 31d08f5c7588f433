"""The Celery app. The broker carries only experiment ids; the database is the source of truth.

CUDA must never be initialized in the worker's parent process (forked children would inherit a
broken context): nothing here touches torch.cuda, NVML-based probing keeps ``is_available()``
harmless, and each child runs one job (``worker_max_tasks_per_child=1``) so GPU memory is
returned to the driver when the job ends.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown, worker_shutting_down

from app.core.config import Settings, get_settings
from app.db.session import dispose_after_fork
from worker import shutdown

os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")

TASK_NAME = "normlab.run_experiment"
GROUP_TASK_NAME = "normlab.run_group"  # a fused group: its members' ids (worker.group_runner)


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
        options: dict[str, object] = {"visibility_timeout": settings.visibility_timeout_s}
        if settings.redis_restore_interval_s is not None:
            options["unacked_restore_interval"] = settings.redis_restore_interval_s
            options["unacked_restore_throttle"] = 1
        app.conf.broker_transport_options = options
    app.conf.update(
        task_acks_late=True,  # a job lost with its worker is redelivered...
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # ...and long jobs are not hoarded by one worker
        worker_max_tasks_per_child=1,
        task_ignore_result=True,  # results live in the database
        task_default_queue="cpu",
        broker_connection_retry_on_startup=True,
    )
    return app


def _in_pool_child(**_: object) -> None:
    shutdown.install_idle_handlers()
    dispose_after_fork()
    # What the job process inherits (torch, Celery, SQLAlchemy) lives as long as it does: keep it
    # out of the collector's full passes, which the training loop's allocations trigger.
    gc.collect()
    gc.freeze()
    from worker.training.device import job_threads, set_threads

    set_threads(job_threads(get_settings().torch_threads))


def _on_warm_shutdown(**_: object) -> None:
    # Celery waits for running jobs on a warm shutdown: ask them to checkpoint and hand back.
    shutdown.stop_worker()


_reconciler: subprocess.Popen[bytes] | None = None


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: a SIGKILLed worker takes it along


def _start_reconciler(**_: object) -> None:
    """The reconciler runs beside each worker, as its own process (no threads across forks)."""
    global _reconciler
    if get_settings().reconcile_in_worker:
        _reconciler = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "reconcile"], preexec_fn=_die_with_parent
        )


def _stop_reconciler(**_: object) -> None:
    if _reconciler is not None and _reconciler.poll() is None:
        _reconciler.terminate()


# Connected by calls rather than as decorators: Celery is unannotated, and a decorator from it
# would make each handler untyped to mypy.
worker_process_init.connect(_in_pool_child)
worker_shutting_down.connect(_on_warm_shutdown)
worker_ready.connect(_start_reconciler)
worker_shutdown.connect(_stop_reconciler)
