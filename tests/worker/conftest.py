"""Worker-side fixtures: a migrated SQLite database and settings pointing at it."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.config import Settings
from app.db.migrate import upgrade


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
