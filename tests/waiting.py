"""Waiting on a state, never on the clock: poll until a condition holds. The deadline is only a
guard against a hang (a test that waits this long has failed whatever the machine's speed), so
a slow or busy machine never fails a test that a fast one passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
# A 20-epoch integration run took over 300 s on the 2-core machine with 9 busy processes per
# core: only a wait far longer than any slowness is a hang.
HANG_S = 900.0


def wait_until(condition: Callable[[], T], what: str, *, timeout: float = HANG_S,
               interval: float = 0.02) -> T:
    """``condition()``'s first true value; fails naming ``what`` only after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still waiting for {what} after {timeout:.0f} s (hung?)")
        time.sleep(interval)
