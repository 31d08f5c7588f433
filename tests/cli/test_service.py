"""`serve` and `worker` arguments: quiet unless --verbose."""

from __future__ import annotations

import logging

import pytest

from app.cli import service
from app.core.config import get_settings


def test_worker_banner_only_when_verbose() -> None:
    quiet = service.worker_argv("cpu", 1, "w1@%h", quiet=True)
    assert quiet[:4] == ["-A", service.WORKER_APP, "--quiet", "worker"]
    assert "--quiet" not in service.worker_argv("cpu", 1, "w1@%h")


@pytest.mark.parametrize("verbose", [False, True])
def test_harmless_worker_lines_only_when_verbose(
    monkeypatch: pytest.MonkeyPatch, verbose: bool
) -> None:
    from worker import verbosity

    monkeypatch.setenv("NORMLAB_VERBOSE", str(verbose).lower())
    get_settings.cache_clear()
    try:
        for name in (*verbosity.NOISY, *verbosity.HARMLESS):
            monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
        verbosity.quiet_logging()
        levels = {logging.getLogger(n).level for n in (*verbosity.NOISY, *verbosity.HARMLESS)}
        assert levels == ({logging.NOTSET} if verbose else {logging.WARNING, logging.ERROR})
    finally:
        get_settings.cache_clear()
