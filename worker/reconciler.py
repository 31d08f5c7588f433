"""The reconciler: re-sends queued experiments whose message the broker lost, takes back
experiments whose worker stopped heart-beating, and enforces the run-time limit. Safe to run
anywhere, many times over: every change it makes is a conditional update.

The re-send rule (docs/reliability.md): an experiment queued past the grace period is sent
again only if the broker holds no message for it (``app.backlog``). One waiting behind busy
workers keeps its single message, however long it waits.

What one pass re-sends goes out in fused groups where fusable (``app.dispatch.plan_groups``):
the members of a group whose worker died stop heart-beating together, are taken back in the
same pass, and so resume together as a group from their checkpoints (docs/reliability.md).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from app.core.config import Settings
from app.db import lifecycle
from app.db.session import session_scope
from app.dispatch import Dispatcher, plan_groups, send_job

log = logging.getLogger(__name__)


@dataclass
class Pass:
    """What one reconciler pass did."""

    sweep: lifecycle.Sweep
    past_grace: int = 0  # queued past the grace period
    in_broker: int = 0  # ...of which the broker still holds a message for
    resent: list[lifecycle.Dispatch] = field(default_factory=list)  # ...the others, sent again
    send_failures: int = 0


def reconcile_once(settings: Settings, dispatcher: Dispatcher, *,
                   detect_lost: bool = True) -> Pass:
    with session_scope(settings.database_url) as session:
        sweep = lifecycle.sweep(
            session, heartbeat_timeout_s=settings.heartbeat_timeout_s,
            max_attempts=settings.max_attempts, max_run_s=settings.max_run_s,
            detect_lost=detect_lost,
        )
        candidates = lifecycle.queued_past_grace(session, queued_grace_s=settings.queued_grace_s)
    result = Pass(sweep, past_grace=len(candidates))
    if candidates:
        # Read after the database: a message taken meanwhile makes at worst a duplicate, which
        # the worker refuses; a message sent meanwhile was for an experiment not yet past grace.
        held = dispatcher.waiting(delivered_s=settings.claim_window_s)
        lost = [experiment_id for experiment_id in candidates if experiment_id not in held]
        result.in_broker = len(candidates) - len(lost)
        with session_scope(settings.database_url) as session:
            result.resent = lifecycle.count_resends(session, lost,
                                                    queued_grace_s=settings.queued_grace_s)
        log.info("reconciler: %d queued past the grace period, %d with a message in the broker, "
                 "re-sending %d", result.past_grace, result.in_broker, len(result.resent))
    result.send_failures += _send(settings, dispatcher, sweep.resend, "its worker was lost")
    result.send_failures += _send(settings, dispatcher, result.resent,
                                  "no message in the broker")
    if sweep.requeued or sweep.failed or sweep.cancelled:
        log.info("reconciler: requeued %d, failed %d, cancelled %d",
                 sweep.requeued, sweep.failed, sweep.cancelled)
    return result


def _send(settings: Settings, dispatcher: Dispatcher, dispatches: list[lifecycle.Dispatch],
          reason: str) -> int:
    """Send them, grouped; a failure is logged and left for a later pass (they stay queued).
    Returns how many experiments could not be sent."""
    counts = {d.experiment_id: d.dispatch_count for d in dispatches}
    failures = 0
    for job in plan_groups(settings, [(d.experiment_id, d.config) for d in dispatches]):
        ids: list[uuid.UUID] = job[1]
        try:
            send_job(dispatcher, job)
        except Exception:
            log.exception("reconciler: could not re-send %s", [str(i) for i in ids])
            failures += len(ids)
            continue
        grouped = f" (in a fused group of {len(ids)})" if len(ids) > 1 else ""
        for experiment_id in ids:
            log.info("reconciler: re-sent %s (dispatch %d): %s%s", experiment_id,
                     counts[experiment_id], reason, grouped)
    return failures


def run_forever(settings: Settings, dispatcher: Dispatcher, stop: threading.Event) -> None:
    outage = Outage(settings.heartbeat_timeout_s)
    while not stop.is_set():
        try:
            reconcile_once(settings, dispatcher, detect_lost=outage.over())
        except Exception:  # a database or broker outage: try again next round
            log.exception("reconciler pass failed")
            outage.seen()
        stop.wait(settings.reconcile_interval_s)


class Outage:
    """No heartbeat reaches a database that is down, so silence during an outage says nothing
    about a worker: after the reconciler's own pass fails, no run is declared lost until a full
    heartbeat timeout has passed with the database back."""

    def __init__(self, heartbeat_timeout_s: float) -> None:
        self._timeout_s = heartbeat_timeout_s
        self._last_failure: float | None = None

    def seen(self) -> None:
        self._last_failure = time.monotonic()

    def over(self) -> bool:
        return (self._last_failure is None
                or time.monotonic() - self._last_failure >= self._timeout_s)

