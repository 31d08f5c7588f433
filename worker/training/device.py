"""Device selection. Call only inside the process that trains: probing CUDA initializes it."""

from __future__ import annotations

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
