"""The metric sink: takes the engine's points off the training thread and has them written to
the database by a process of its own (``worker.metric_writer``), so training never waits on the
database nor competes with the writing for the interpreter lock. Each write also renews the
experiment's lease (heartbeat) and reads its status, which is how cancellation reaches the
training loop.

Batches are written in arrival order, one transaction each, so readers always see whole steps.
While the database is unreachable the writer retries with backoff; past ``outage_limit_s`` it
gives up and the experiment fails with that reason. Points not yet written are bounded (past
``max_buffered_points`` the training thread waits). A lost lease (another worker took over)
stops training at once. Checkpoints are staged and published by the sink once their points are
written (``staged``), so an epoch end never waits for the database.

In the training process two threads remain: one pickles pending points into the pipe (as
columns, ``metric_writer.encode``: ≈ 0.4 µs a point) at most every ``SEND_EVERY_S``, one
reads the writer's replies (one per write). Profiled in a real job process (py-spy, the worst
case of docs/benchmarks.md) they hold ≈ 1–2% of the training thread's samples.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.config import staged_path
from app.db.lifecycle import Lease
from worker import metric_writer
from worker.training.result import MetricPoint

log = logging.getLogger(__name__)
LeaseLostError = metric_writer.LeaseLostError
# Points wait this long at most before they go to the writer, all in one batch (one message,
# one transaction): a write costs the writer and its Postgres backend ≈ 4 ms of CPU whatever its
# size (heartbeat, lock, block upsert, commit), CPU taken from a training that uses every core.
# The engine puts a batch at every epoch end, which a small net reaches every 0.1 s; puts of
# single steps cost ≈ 130 µs of CPU a point written one by one, ≈ 9.5 µs at a write per 0.5 s
# (bench/ingest.py --write-cpu, docs/benchmarks.md). Readers see points that much later; a
# caller waiting for its points (`wait_written`, close) does not wait for it.
SEND_EVERY_S = 0.5
SEND_AT_POINTS = 100_000  # or as soon as this many are pending


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
        self.lease = lease
        self.max_buffered_points = max_buffered_points
        self.points_written = 0
        self._points_put = 0
        self._pending: list[MetricPoint] = []
        self._cond = threading.Condition()
        self._closing = False
        self._hurry = False  # someone waits for points written: send what is pending now
        self._cancel = threading.Event()
        self.lease_lost = False
        self.error: str | None = None
        self._checkpoint: Path | None = None  # where published checkpoints go
        self._staging: Path | None = None
        self._staged_at: int | None = None  # points put before the staged checkpoint
        # Forked before any thread of this sink exists; the writer needs no torch, only the
        # database modules this process has imported already. A plain fork, not
        # multiprocessing.Process: a Celery job process counts as a daemon, which may not have
        # children of multiprocessing's own.
        self._connection, theirs = multiprocessing.Pipe()
        self._writer_pid = os.fork()
        if self._writer_pid == 0:  # the writer
            status = 1
            try:
                self._connection.close()
                metric_writer.run(theirs, database_url, lease, flush_every_s, outage_limit_s)
                status = 0
            except BaseException:
                log.exception("metric writer failed")
            finally:
                os._exit(status)  # never the job process's own exit path (atexit, Celery)
        theirs.close()
        self._sender = threading.Thread(target=self._send, name="metric-sender", daemon=True)
        self._receiver = threading.Thread(target=self._receive, name="metric-replies",
                                          daemon=True)
        self._sender.start()
        self._receiver.start()

    # ---- called from the training thread
    def put(self, points: Sequence[MetricPoint]) -> None:
        with self._cond:
            # Backpressure instead of unbounded memory: wait while too much is unwritten.
            while (self._points_put - self.points_written >= self.max_buffered_points
                   and self._alive()):
                self._cond.wait(0.1)
            idle = not self._pending  # else the sender is waiting out SEND_EVERY_S already
            self._pending.extend(points)
            self._points_put += len(points)
            if idle or len(self._pending) >= SEND_AT_POINTS:
                self._cond.notify_all()

    def wait_written(self) -> None:
        """Block until every point put so far is in the database (a checkpoint barrier: a
        checkpoint must never be ahead of the metrics stored for it)."""
        with self._cond:
            target = self._points_put
            if self.points_written < target:
                self._hurry = True
                self._cond.notify_all()
            while self.points_written < target and self._alive() and self._receiver.is_alive():
                self._cond.wait(0.05)

    def staged(self, checkpoint: Path) -> Path:
        """Where the engine should write its checkpoints instead of ``checkpoint`` (pass
        ``before_checkpoint`` along with it): each one is staged there and published, renamed to
        ``checkpoint``, once the points put before it are in the database. The training thread
        never waits for the database at an epoch end, and a published checkpoint is never ahead
        of the stored metrics (a crash leaves the previous one, whose later points a resumed
        attempt drops)."""
        self._checkpoint = checkpoint
        self._staging = staged_path(checkpoint)
        return self._staging

    def before_checkpoint(self) -> None:
        """Called by the engine before it overwrites the staged checkpoint: the previous one is
        published if its points are written by now, else the new one replaces it. Never waits:
        an epoch can be shorter than ``SEND_EVERY_S``, and the training thread would wait for
        the database at every epoch end (+20 ms an epoch measured). The published checkpoint
        may lag the staged one by a few epochs (until a write lands between two epoch ends);
        a resumed attempt repeats them. ``close`` publishes the last one."""
        self.publish_checkpoint()
        with self._cond:
            self._staged_at = self._points_put

    def publish_checkpoint(self) -> bool:
        """Publish the staged checkpoint if the points put before it are written; True if there
        is one and it was published."""
        target = self._staged_at
        if self._checkpoint is None or self._staging is None or target is None:
            return False
        with self._cond:
            if self.points_written < target or not self._alive():
                return False
            self._staged_at = None
        if not self._staging.is_file():
            return False
        os.replace(self._staging, self._checkpoint)
        return True

    def should_stop(self) -> bool:
        return self._cancel.is_set() or not self._alive()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def close(self) -> None:
        """Write everything still pending, then stop the threads and the writer, and publish
        the staged checkpoint (if any)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._sender.join()
        self._receiver.join()  # the writer answered "closed" or failed: it has nothing left
        with contextlib.suppress(ProcessLookupError):
            os.kill(self._writer_pid, signal.SIGKILL)
        os.waitpid(self._writer_pid, 0)
        self._connection.close()
        # A staged checkpoint whose points were not all written must not outlive the run.
        if not self.publish_checkpoint() and self._staging is not None:
            self._staging.unlink(missing_ok=True)

    def _alive(self) -> bool:
        return self.error is None and not self.lease_lost

    # ---- the sender thread: pending points → the pipe
    def _send(self) -> None:
        not_before = 0.0
        while True:
            with self._cond:
                while not self._closing:
                    left = not_before - time.monotonic()
                    if self._pending and (left <= 0 or self._hurry
                                          or len(self._pending) >= SEND_AT_POINTS):
                        break
                    self._cond.wait(left if self._pending else None)
                batch, self._pending = self._pending, []
                self._hurry = False
                closing = self._closing
            try:
                if batch and self._alive():
                    self._connection.send_bytes(metric_writer.encode(batch))
                    not_before = time.monotonic() + SEND_EVERY_S
                if closing:
                    self._connection.send_bytes(b"")
                    return
            except OSError:  # the writer is gone; the receiver says why
                return

    # ---- the receiver thread: the writer's replies
    def _receive(self) -> None:
        while True:
            try:
                reply: tuple[Any, ...] = self._connection.recv()
            except (EOFError, OSError):
                self._fail("the metric writer process exited unexpectedly")
                return
            kind = reply[0]
            if kind == "written":
                with self._cond:
                    self.points_written = int(reply[1])
                    self._cond.notify_all()
                if reply[2] == "cancelling":
                    self._cancel.set()
            elif kind == "lost":
                log.error("experiment %s was taken over by another worker; stopping",
                          self.lease.experiment_id)
                with self._cond:
                    self.lease_lost = True
                    self._cond.notify_all()
                return
            elif kind == "error":
                log.error("metric sink giving up: %s", reply[1])
                self._fail(str(reply[1]))
                return
            else:  # "closed": everything was written
                return

    def _fail(self, reason: str) -> None:
        with self._cond:
            if self.error is None and not self.lease_lost:
                self.error = reason
            self._cond.notify_all()
