"""A worker's own Prometheus endpoint (off unless ``NORMLAB_WORKER_METRICS_PORT`` or
``normlab worker --metrics-port`` is set): the points its jobs wrote and its sink's write
latency, summed over the job processes it forks (``app.core.telemetry``)."""

from __future__ import annotations

import logging
from pathlib import Path

from celery.signals import worker_init, worker_shutdown

from app.core import telemetry
from app.core.config import get_settings

log = logging.getLogger(__name__)
_shared: list[Path] = []  # the directory this worker made, removed when it stops


def _start(**_: object) -> None:
    """In the worker's main process, before it forks any job process."""
    port = get_settings().worker_metrics_port
    if port is None:
        return
    made = not telemetry.shared_directory()
    directory = telemetry.share_between_processes()
    if made:
        _shared.append(directory)
    telemetry.instruments()  # zeros until the first job writes: every series is there at once
    telemetry.serve_worker_metrics(port)
    log.info("worker metrics on http://0.0.0.0:%d/metrics", port)


def _stop(**_: object) -> None:
    for directory in _shared:
        telemetry.stop_sharing(directory)


# Connected by call, not as decorators: Celery's decorators are untyped.
worker_init.connect(_start, weak=False)
worker_shutdown.connect(_stop, weak=False)
