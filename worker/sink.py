"""The metric sink: buffers the engine's points and writes them to the database in a background
thread, so training never waits on the database; it also carries the heartbeat and the cancel flag.

Batches are written in the order they arrived, each write in one transaction, so readers always
see whole steps. While the database is unreachable the sink keeps points (bounded) and retries with
backoff; past ``outage_limit_s`` it gives up and the experiment fails with that reason.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from app.db import experiments, metrics
from app.db.session import session_scope
from worker.training.result import MetricPoint

log = logging.getLogger(__name__)


class SinkFailedError(RuntimeError):
    pass


class MetricSink:
    def __init__(
        self,
        database_url: str,
        experiment_id: uuid.UUID,
        *,
        flush_every_s: float = 1.0,
        outage_limit_s: float = 300.0,
        max_buffered_points: int = 2_000_000,
    ) -> None:
        self.database_url = database_url
        self.experiment_id = experiment_id
        self.flush_every_s = flush_every_s
        self.outage_limit_s = outage_limit_s
        self.max_buffered_points = max_buffered_points
        self.points_written = 0
        self._pending: list[MetricPoint] = []
        self._cond = threading.Condition()
        self._closing = False
        self._cancel = threading.Event()
        self._error: str | None = None
        self._thread = threading.Thread(target=self._run, name="metric-sink", daemon=True)
        self._thread.start()

    # ---- called from the training thread
    def put(self, points: Sequence[MetricPoint]) -> None:
        with self._cond:
            # Backpressure instead of unbounded memory: wait while the buffer is full.
            while len(self._pending) >= self.max_buffered_points and self._error is None:
                self._cond.wait(0.1)
            self._pending.extend(points)
            self._cond.notify_all()

    def should_stop(self) -> bool:
        return self._cancel.is_set() or self._error is not None

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def error(self) -> str | None:
        return self._error

    def close(self) -> None:
        """Write everything still buffered, then stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    # ---- the writer thread
    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(self.flush_every_s)
                batch, self._pending = self._pending, []
                closing = self._closing
                self._cond.notify_all()
            if not self._write_with_retry(batch):
                return
            if closing:
                with self._cond:
                    if not self._pending:
                        return

    def _write_with_retry(self, batch: list[MetricPoint]) -> bool:
        delay, first_failure = 0.2, None
        while True:
            try:
                self._write(batch)
                return True
            except SQLAlchemyError as exc:
                now = time.monotonic()
                first_failure = first_failure or now
                if now - first_failure > self.outage_limit_s:
                    self._error = (
                        f"database unreachable for over {self.outage_limit_s:.0f} s: {exc}"
                    )
                    log.error("metric sink giving up: %s", self._error)
                    return False
                log.warning("metric write failed (retrying in %.1fs): %s", delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _write(self, batch: list[MetricPoint]) -> None:
        with session_scope(self.database_url) as session:
            metrics.insert_points(session, self.experiment_id, batch)
            status = experiments.heartbeat(session, self.experiment_id)
        self.points_written += len(batch)
        if status in ("cancelling", "cancelled"):
            self._cancel.set()
