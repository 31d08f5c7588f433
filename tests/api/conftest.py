"""API test fixtures: a fresh SQLite file per test and a dispatcher that only records sends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from app.db.session import engine_for
from app.main import create_app
from tests.api.helpers import FUZZ_CASES, FakeDispatcher


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path}/t.db",
        data_dir=tmp_path / "data",
        artifacts_dir=tmp_path / "art",
    )


@pytest.fixture
def dispatcher() -> FakeDispatcher:
    return FakeDispatcher()


@pytest.fixture
def client(settings: Settings, dispatcher: FakeDispatcher) -> Iterator[TestClient]:
    app = create_app(settings, dispatcher=dispatcher)
    with TestClient(app) as test_client:  # `with`: the lifespan migrates the SQLite file
        yield test_client
    engine_for(settings.database_url).dispose()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FUZZ_CASES:
        counts = ", ".join(f"{name} {n}" for name, n in sorted(FUZZ_CASES.items()))
        terminalreporter.write_line(f"fuzz cases run: {counts}, total {sum(FUZZ_CASES.values())}")
