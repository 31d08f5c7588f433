"""The metric sink: buffers the engine's points and writes them to the database in a background
thread, so training never waits on the database. Each write also renews the experiment's lease
(heartbeat) and reads its status, which is how cancellation reaches the training loop.

Batches are written in arrival order, one transaction each, so readers always see whole steps:
the heartbeat first (it also locks the experiment's row, so writers of one experiment take
turns), then the points (on Postgres by COPY, ``app.db.metrics.insert_points``), one commit.
While the database is unreachable the sink keeps its points (bounded: past ``max_buffered_points``
the training thread waits) and retries with backoff; past ``outage_limit_s`` it gives up and the
experiment fails with that reason. A lost lease (another worker took over) stops training at once.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Sequence

from app.core import telemetry
from app.db import lifecycle, metrics
from app.db.lifecycle import Lease
from app.db.session import session_scope
from worker.dbretry import DatabaseOutageError, with_retry
from worker.training.result import MetricPoint

log = logging.getLogger(__name__)


class LeaseLostError(RuntimeError):
    pass


class MetricSink:
    def __init__(
        self,
        database_url: str,
        lease: Lease,
        *,
        flush_every_s: float = 1.0,
        outage_limit_s: float = 300.0,
        max_buffered_points: int = 2_000_000,
    ) -> None:
        self.database_url = database_url
        self.lease = lease
        self.flush_every_s = flush_every_s
        self.outage_limit_s = outage_limit_s
        self.max_buffered_points = max_buffered_points
        self.points_written = 0
        self._points_put = 0
        self._pending: list[MetricPoint] = []
        self._cond = threading.Condition()
        self._closing = False
        self._cancel = threading.Event()
        self.lease_lost = False
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, name="metric-sink", daemon=True)
        self._thread.start()

    # ---- called from the training thread
    def put(self, points: Sequence[MetricPoint]) -> None:
        with self._cond:
            # Backpressure instead of unbounded memory: wait while the buffer is full.
            while len(self._pending) >= self.max_buffered_points and self._alive():
                self._cond.wait(0.1)
            self._pending.extend(points)
            self._points_put += len(points)
            self._cond.notify_all()

    def wait_written(self) -> None:
        """Block until every point put so far is in the database (a checkpoint barrier: a
        checkpoint must never be ahead of the metrics stored for it)."""
        with self._cond:
            target = self._points_put
            while self.points_written < target and self._alive() and self._thread.is_alive():
                self._cond.wait(0.05)

    def should_stop(self) -> bool:
        return self._cancel.is_set() or not self._alive()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def close(self) -> None:
        """Write everything still buffered, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _alive(self) -> bool:
        return self.error is None and not self.lease_lost

    # ---- the writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self.flush_every_s)
                batch, self._pending = self._pending, []
                closing = self._closing and not self._pending
                self._cond.notify_all()
            try:
                with_retry(functools.partial(self._write, batch), limit_s=self.outage_limit_s,
                           what="write metrics")
            except DatabaseOutageError as exc:
                self.error = str(exc)
                log.error("metric sink giving up: %s", exc)
                return
            except LeaseLostError:
                self.lease_lost = True
                log.error("experiment %s was taken over by another worker; stopping",
                          self.lease.experiment_id)
                return
            if closing:
                return

    def _write(self, batch: list[MetricPoint]) -> None:
        started = time.perf_counter()
        with session_scope(self.database_url) as session:
            # The heartbeat goes first: if the lease is lost, nothing of this batch is written.
            status = lifecycle.heartbeat(session, self.lease)
            if status is None:
                raise LeaseLostError
            metrics.insert_points(session, self.lease.experiment_id, batch)
        counted = telemetry.instruments()
        counted.sink_write_seconds.observe(time.perf_counter() - started)
        counted.points_written.inc(len(batch))
        with self._cond:
            self.points_written += len(batch)
            self._cond.notify_all()
        if status == "cancelling":
            self._cancel.set()
