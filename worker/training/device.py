"""Device selection. Call only inside the process that trains: probing CUDA initializes it."""

from __future__ import annotations

import os

import torch


class DeviceUnavailableError(RuntimeError):
    pass


def resolve_device(requested: str, override: str | None = None) -> torch.device:
    """Map a config's ``auto|cpu|cuda|cuda:N`` (or a worker's override) to a usable device."""
    name = override or requested
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {name!r} requested but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device {name!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return device


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers narrow)."""
    return len(os.sched_getaffinity(0))


def job_threads(configured: int | None) -> int:
    """Intra-op threads for a worker's job process: ``configured``, else every core but one.

    The spare core is for the job's tracking (its metric writer process, and a local Postgres
    backend): an OpenMP team on every core stalls at each barrier whenever one of its threads is
    preempted, so a writer using a few percent of a core slowed the ``geron-bn`` net by 20-60% on
    2 cores; with a core to itself the tracking costs about nothing (docs/benchmarks.md,
    "Tracking cost")."""
    return configured or max(1, usable_cores() - 1)


def set_threads(threads: int | None) -> None:
    """Use ``threads`` intra-op threads in this process (None: leave torch's default)."""
    if threads:
        torch.set_num_threads(threads)
