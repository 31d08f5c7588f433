"""Graceful shutdown of a job: SIGTERM (or SIGUSR2 from the worker's parent) asks the running job
to checkpoint and hand its experiment back instead of dying mid-step. (SIGUSR1 is taken: the
pool uses it for soft time limits.)"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType

requested = threading.Event()
# Set in the worker's main process when it begins a warm shutdown; a job process forked after
# that inherits it and starts nothing.
worker_stopping = threading.Event()


def _on_signal(_signum: int, _frame: FrameType | None) -> None:
    requested.set()


def _on_stop_while_idle(_signum: int, _frame: FrameType | None) -> None:
    worker_stopping.set()


def install_idle_handlers() -> None:
    """In a pool child as soon as it is forked: the parent's SIGUSR2 (warm shutdown) means
    "start nothing", not death (an idle child killed by it is logged as an error by Celery)."""
    signal.signal(signal.SIGUSR2, _on_stop_while_idle)


def install_job_handlers() -> None:
    """In the process that trains, when a job starts: SIGTERM/SIGUSR2 → finish cleanly."""
    requested.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGUSR2, _on_signal)


def child_pids(parent: int | None = None) -> list[int]:
    """Direct children of ``parent`` (default: this process), read from /proc."""
    parent = os.getpid() if parent is None else parent
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = open(f"/proc/{entry}/stat").read()  # noqa: SIM115
            # Field 4 is the parent pid; the command name (field 2) may hold spaces.
            if int(stat.rsplit(")", 1)[1].split()[1]) == parent:
                pids.append(int(entry))
    return pids


def stop_worker() -> None:
    """In the worker's parent, on warm shutdown: start no job, and tell each running one to
    wind down."""
    worker_stopping.set()
    forward_to_children()


def forward_to_children() -> None:
    """Tell each job process to wind down."""
    for pid in child_pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGUSR2)
