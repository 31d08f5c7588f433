"""The metric writer process: the database half of the metric sink (``worker.sink``).

Forked by the job process before training starts, it receives batches of points over a pipe
(pickled columns, see ``encode``), and writes them as the sink
always did: one transaction per batch, the heartbeat first (it locks the experiment's row and
fences a lost lease), then the points (COPY and series blocks on Postgres). All the per-point
Python work of a write — encoding, COPY rows, block summaries — and the driver's waiting happen
here, on their own interpreter lock: in a thread of the training process they competed with the
training loop for the GIL, which cost a fast small net 10–15% of its speed (docs/benchmarks.md).

Replies to the sink: ``("written", total, status)`` after each write, ``("lost",)``,
``("error", reason)``, and ``("closed", total)`` after the end-of-stream marker (``b""``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import pickle
import signal
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from app.core import telemetry
from app.db import lifecycle, metrics
from app.db.lifecycle import Lease
from app.db.session import dispose_after_fork, session_scope
from worker.dbretry import DatabaseOutageError, with_retry
from worker.training.result import MetricPoint

log = logging.getLogger(__name__)
MAX_COALESCED_POINTS = 200_000  # batches waiting in the pipe go into one transaction, up to this


class LeaseLostError(RuntimeError):
    pass


def encode(points: Sequence[MetricPoint]) -> bytes:
    """A batch as five pickled columns: ``zip(*points)`` transposes in C, so the job process pays
    ≈ 0.4 µs a point (a list of plain tuples cost ≈ 0.9 µs, a list of NamedTuples 1–1.5 µs;
    measured on the 2-core VM, docs/benchmarks.md). Values go through unchanged: NaN and ±inf too.
    """
    return pickle.dumps(tuple(zip(*points, strict=True)), protocol=pickle.HIGHEST_PROTOCOL)


# A batch as (name, step, epoch, value, wall_time) columns, as ``encode`` sends it.
Batch = tuple[list[str], list[int], list[int], list[float], list[float]]


def empty() -> Batch:
    return [], [], [], [], []


def decode(payload: bytes, into: Batch) -> None:
    """Append the points ``encode`` was given, in their order, to the columns ``into``: kept as
    columns down to the store, with no object a point (``metrics.insert_columns``)."""
    columns: tuple[list[Any], ...] = into
    for column, part in zip(columns, pickle.loads(payload), strict=True):
        column.extend(part)


def _die_with_parent() -> None:
    """A job process killed outright takes its writer along (no orphan heart-beating)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def write(database_url: str, lease: Lease, batch: Batch) -> str:
    started = time.perf_counter()
    with session_scope(database_url) as session:
        # The heartbeat goes first: if the lease is lost, nothing of this batch is written.
        status = lifecycle.heartbeat(session, lease)
        if status is None:
            raise LeaseLostError
        metrics.insert_columns(session, lease.experiment_id, *batch)
    # Operators' metrics (GET /metrics): committed points and the write's latency.
    counted = telemetry.instruments()
    counted.sink_write_seconds.observe(time.perf_counter() - started)
    counted.points_written.inc(len(batch[0]))
    return status


def run(connection: Connection, database_url: str, lease: Lease, flush_every_s: float,
        outage_limit_s: float) -> None:
    """The writer's main loop (in the forked process)."""
    dispose_after_fork()  # the job process's connections are its own
    _die_with_parent()
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2):
        signal.signal(signum, signal.SIG_IGN)  # the job process decides when writing ends
    written, closing, wait_s = 0, False, 0.0
    while not closing:
        batch = empty()
        # Nothing for a flush interval: an empty write still renews the heartbeat. The first
        # write goes at once, points or not: connecting (a new Postgres backend) and the first
        # statements then cost CPU while the job loads its data, not during its first steps.
        ready = connection.poll(wait_s)
        wait_s = flush_every_s
        while ready and len(batch[0]) < MAX_COALESCED_POINTS:
            try:
                payload = connection.recv_bytes()
            except (EOFError, OSError):  # the job process is gone: write nothing more
                return
            if not payload:
                closing = True
                break
            decode(payload, batch)
            ready = connection.poll(0)
        try:
            status = with_retry(functools.partial(write, database_url, lease, batch),
                                limit_s=outage_limit_s, what="write metrics")
        except DatabaseOutageError as exc:
            connection.send(("error", str(exc)))
            return
        except LeaseLostError:
            connection.send(("lost",))
            return
        written += len(batch[0])
        connection.send(("written", written, status))
    connection.send(("closed", written))
