"""``GET /metrics``: the service's state for Prometheus (text format).

Request counts and latencies, and the points the workers wrote, come from the processes'
counters (``app.core.telemetry``); experiments by status and queue, the oldest queued one and
the workers' heartbeat ages are read from the database at each scrape. Behind an admin key as
soon as keys exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

from fastapi import APIRouter, HTTPException, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app.api.deps import CallerDep
from app.core import telemetry
from app.core.config import Settings
from app.db import census
from app.dispatch import queue_for

router = APIRouter(tags=["meta"])
STATUSES = ("queued", "running", "cancelling", "succeeded", "diverged", "failed", "cancelled")


class CensusCollector(Collector):
    """Gauges from one ``census.take`` (every status and queue appears, zeros included)."""

    def __init__(self, taken: census.Census, settings: Settings) -> None:
        self.taken, self.settings = taken, settings

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = datetime.now(UTC)
        experiments = GaugeMetricFamily("normlab_experiments", "Experiments by status and queue",
                                        labels=["status", "queue"])
        counts = {(s, q): 0 for s in STATUSES for q in ("cpu", "gpu")}
        for (status, device), n in self.taken.by_status_device.items():
            key = (status, queue_for(device, self.settings))
            counts[key] = counts.get(key, 0) + n
        for (status, queue), n in sorted(counts.items()):
            experiments.add_metric([status, queue], n)
        yield experiments
        oldest = self.taken.oldest_queued_at
        yield GaugeMetricFamily(
            "normlab_oldest_queued_age_seconds",
            "Seconds since the oldest queued experiment was submitted (0: none queued)",
            value=max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        )
        beats = GaugeMetricFamily(
            "normlab_worker_heartbeat_age_seconds",
            "Seconds since each worker running an experiment last renewed its lease",
            labels=["worker"],
        )
        for worker, stamp in sorted(self.taken.heartbeats.items()):
            beats.add_metric([worker], max((now - stamp).total_seconds(), 0.0))
        yield beats


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                             "description": "Prometheus text format"},
                       403: {"description": "Keys exist and this one is not an admin's"}})
def prometheus_metrics(caller: CallerDep) -> Response:
    """For Prometheus: HTTP requests and latency by route and status, experiments by status and
    queue, the oldest queued experiment's age, points written, sink write latency, and each
    running worker's heartbeat age."""
    with caller.session() as (session, principal):
        if not principal.admin:
            raise HTTPException(403, "/metrics needs an admin key")
        taken = census.take(session)
    own = CollectorRegistry(auto_describe=False)
    own.register(CensusCollector(taken, caller.settings))
    telemetry.instruments()  # so that a fresh process shows its (zero) counters too
    body = generate_latest(telemetry.registry()) + generate_latest(own)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
