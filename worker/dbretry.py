"""Retrying database work through outages (a Postgres restart, a failover)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = logging.getLogger(__name__)
T = TypeVar("T")


class DatabaseOutageError(RuntimeError):
    pass


def is_outage(exc: DBAPIError) -> bool:
    return isinstance(exc, OperationalError | InterfaceError) or exc.connection_invalidated


def with_retry(work: Callable[[], T], *, limit_s: float, what: str,
               should_give_up: Callable[[], bool] = lambda: False) -> T:
    """Run ``work`` until it succeeds, backing off 0.2 s → 5 s, for at most ``limit_s``."""
    delay, first_failure = 0.2, time.monotonic()
    while True:
        try:
            return work()
        except DBAPIError as exc:
            if not is_outage(exc):
                raise  # a real error (a constraint, bad SQL), not an outage
            waited = time.monotonic() - first_failure
            if waited > limit_s or should_give_up():
                raise DatabaseOutageError(
                    f"database unreachable for over {limit_s:.0f} s while trying to {what}: "
                    f"{str(exc).splitlines()[0]}"
                ) from exc
            log.warning("%s failed (retrying in %.1fs): %s", what, delay,
                        str(exc).splitlines()[0])
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
