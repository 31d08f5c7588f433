"""The reconciler: re-sends queued experiments the broker lost, takes back experiments whose
worker stopped heart-beating, and enforces the run-time limit. Safe to run anywhere, many times
over: every change it makes is a conditional update."""

from __future__ import annotations

import logging
import threading

from app.core.config import Settings
from app.db import lifecycle
from app.db.session import session_scope
from app.dispatch import Dispatcher, queue_for

log = logging.getLogger(__name__)


def reconcile_once(settings: Settings, dispatcher: Dispatcher) -> lifecycle.Sweep:
    with session_scope(settings.database_url) as session:
        sweep = lifecycle.sweep(
            session, queued_grace_s=settings.queued_grace_s,
            heartbeat_timeout_s=settings.heartbeat_timeout_s,
            max_attempts=settings.max_attempts, max_run_s=settings.max_run_s,
        )
    for experiment_id, device in sweep.resend:
        dispatcher.send(experiment_id, queue_for(device, settings))
    if sweep.resend or sweep.failed or sweep.cancelled:
        log.info("reconciler: re-sent %d (requeued %d), failed %d, cancelled %d",
                 len(sweep.resend), sweep.requeued, sweep.failed, sweep.cancelled)
    return sweep


def run_forever(settings: Settings, dispatcher: Dispatcher, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            reconcile_once(settings, dispatcher)
        except Exception:  # a database or broker outage: try again next round
            log.exception("reconciler pass failed")
        stop.wait(settings.reconcile_interval_s)

