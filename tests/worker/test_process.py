"""Process-level concerns of the worker: fork safety and shutdown signalling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from tests.waiting import HANG_S
from worker import shutdown


def test_importing_the_worker_does_not_initialize_cuda() -> None:
    code = "import worker.tasks, torch, sys; sys.exit(1 if torch.cuda.is_initialized() else 0)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_child_pids_and_forwarding_reach_a_job_process() -> None:
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import signal, sys\n"
                "signal.signal(signal.SIGUSR2, lambda *a: sys.exit(7))\n"
                "print('ready', flush=True)\n"
                "signal.pause()\n"
            ),
        ],
        stdout=subprocess.PIPE,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
    assert child.pid in shutdown.child_pids(os.getpid())
    shutdown.forward_to_children()
    assert child.wait(timeout=HANG_S) == 7


def test_job_handlers_turn_sigterm_into_a_request() -> None:
    saved = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR2)
    try:
        shutdown.install_job_handlers()
        assert not shutdown.requested.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        assert shutdown.requested.wait(HANG_S)
    finally:
        signal.signal(signal.SIGTERM, saved[0])
        signal.signal(signal.SIGUSR2, saved[1])
        shutdown.requested.clear()


def test_an_idle_pool_child_takes_the_stop_signal_as_start_nothing() -> None:
    saved = signal.getsignal(signal.SIGUSR2)
    try:
        shutdown.install_idle_handlers()
        os.kill(os.getpid(), signal.SIGUSR2)  # would end the process with the default action
        assert shutdown.worker_stopping.wait(HANG_S)
    finally:
        signal.signal(signal.SIGUSR2, saved)
        shutdown.worker_stopping.clear()
