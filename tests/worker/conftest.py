"""Worker-side fixtures: a migrated SQLite database and settings pointing at it."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.config import Settings
from app.db.migrate import upgrade
from worker import shutdown


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(
        database_url=f"sqlite:///{tmp_path}/w.db",
        data_dir=tmp_path / "data",
        artifacts_dir=tmp_path / "art",
        metric_flush_s=0.05,
        db_outage_limit_s=2,
    )
    upgrade(s.database_url)
    return s


@pytest.fixture(autouse=True)
def _restore_signals() -> Iterator[None]:
    """Jobs run in the test's process install their shutdown handlers: put them back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)
    shutdown.requested.clear()
