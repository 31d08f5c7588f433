"""Prometheus instruments shared by the API and the workers, and their exposition.

Several processes count: uvicorn's worker processes (``serve --workers N``) and each Celery job's
forked child (one per job). Their counters and histograms go through prometheus-client's
multiprocess mode: every process writes its values to files in one directory
(``PROMETHEUS_MULTIPROC_DIR``) and a scrape sums them, whichever process answers it. `serve`
and `worker` create that directory before any instrument exists, which is why this module
imports prometheus-client only inside functions and builds the instruments on first use. Values
that the database knows (experiments by status, queue ages, heartbeats) are not counted here:
they are read at each scrape (``app.api.routes.prometheus``), so every process reports the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def shared_directory() -> str:
    """The directory the processes count into; empty when this process counts alone."""
    return os.environ.get(MULTIPROC_ENV, "")


def share_between_processes() -> Path:
    """Make this process and its children count into one fresh directory (kept if one is set
    already: an embedded worker shares its `serve`'s). Call before any instrument is used."""
    existing = os.environ.get(MULTIPROC_ENV)
    if existing:
        return Path(existing)
    directory = Path(tempfile.mkdtemp(prefix="normlab-prometheus-"))
    os.environ[MULTIPROC_ENV] = str(directory)
    return directory


def stop_sharing(directory: Path) -> None:
    """Remove the directory ``share_between_processes`` made (at the end of the process)."""
    shutil.rmtree(directory, ignore_errors=True)


@dataclass(frozen=True)
class Instruments:
    requests: Counter
    request_seconds: Histogram
    points_written: Counter
    sink_write_seconds: Histogram


@lru_cache(maxsize=1)
def instruments() -> Instruments:
    from prometheus_client import Counter, Histogram

    return Instruments(
        requests=Counter("normlab_http_requests", "HTTP requests answered",
                         ["method", "route", "status"]),
        request_seconds=Histogram("normlab_http_request_duration_seconds",
                                  "Time to answer an HTTP request", ["method", "route", "status"]),
        points_written=Counter("normlab_metric_points_written",
                               "Metric points the workers' sinks committed to the database"),
        sink_write_seconds=Histogram(
            "normlab_sink_write_duration_seconds",
            "Time of one metric sink transaction (heartbeat and points)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
        ),
    )


def registry() -> CollectorRegistry:
    """What a scrape of this process shows: every process's values in multiprocess mode, else
    this process's own."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return REGISTRY
    combined = CollectorRegistry()
    MultiProcessCollector(combined, path=directory)  # type: ignore[no-untyped-call]
    return combined


def serve_worker_metrics(port: int) -> None:
    """A worker's own endpoint (``GET http://host:port/metrics``) in a background thread."""
    from prometheus_client import start_http_server

    start_http_server(port, registry=registry())
