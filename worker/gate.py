"""The gate: a message whose experiment is no longer queued (a duplicate, a redelivery, a
re-send that crossed a claim) is acknowledged and dropped in the worker's parent process, before
a child process is forked for it (one job per child costs 1.4–2.3 s to start on a small
machine). The check is one primary-key read; the child's conditional claim stays the rule that
decides, so a gate that lets a stale message through (the database unreachable) costs only time.

Celery lets a task choose its *strategy*, the parent's handler of each received message; this
one wraps Celery's default strategy. A fused group's message (a list of ids) passes while any
of its members is still queued; the group job drops the others at claim time.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery.worker.strategy import default

from app.core.config import get_settings
from app.db import experiments, groups
from app.db.session import session_scope

log = logging.getLogger(__name__)


def _experiment_of(message: Any) -> uuid.UUID | list[uuid.UUID] | None:
    try:
        first = message.decode()[0][0]  # protocol 2: [args, kwargs, embed]
        if isinstance(first, list):  # a fused group
            return [uuid.UUID(str(i)) for i in first]
        return uuid.UUID(str(first))
    except Exception:  # anything unexpected is for the task itself to refuse
        return None


def stale_status(database_url: str, experiment_id: uuid.UUID) -> str | None:
    """The status that makes a message stale ("running", "deleted", ...), or None to run it:
    still queued, or the database cannot tell right now."""
    try:
        with session_scope(database_url) as session:
            status = experiments.status_of(session, experiment_id)
    except Exception:  # an outage: the child's claim retries it
        log.warning("gate: no status for %s; the job decides", experiment_id, exc_info=True)
        return None
    if status is None:
        return "deleted"
    return None if status == "queued" else status


def stale_group(database_url: str, experiment_ids: list[uuid.UUID]) -> str | None:
    """A group's message is stale when none of its members is queued any more."""
    try:
        with session_scope(database_url) as session:
            found = groups.statuses(session, experiment_ids)
    except Exception:
        log.warning("gate: no status for group %s; the job decides", experiment_ids,
                    exc_info=True)
        return None
    if "queued" in found.values():
        return None
    return "no member queued"


def strategy(task: Any, app: Any, consumer: Any, **options: Any) -> Callable[..., Any]:
    handle: Callable[..., Any] = default(task, app, consumer, **options)
    hostname, errors = consumer.hostname, consumer.connection_errors
    database_url = get_settings().database_url

    def on_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any,
                   **kwargs: Any) -> Any:
        started = time.perf_counter()
        experiment_id = _experiment_of(message)
        if isinstance(experiment_id, list):
            status = stale_group(database_url, experiment_id)
        else:
            status = stale_status(database_url, experiment_id) if experiment_id else None
        if status is None:
            return handle(message, body, ack, reject, callbacks, **kwargs)
        ack(log, errors)
        log.info("%s skipped %s: %s, not queued (gate, %.1f ms, no child process)", hostname,
                 experiment_id, status, (time.perf_counter() - started) * 1000)
        return None

    return on_message
