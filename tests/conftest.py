"""Database fixtures: a test using them runs on SQLite, and on Postgres when
NORMLAB_TEST_POSTGRES_URL is set. Under CI (CI=true) a missing Postgres URL fails the tests
instead of skipping them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from app.db.migrate import upgrade
from app.db.session import engine_for, session_factory
from tests.database import truncate_all
from tests.db.ci import required_env

POSTGRES_ENV = "NORMLAB_TEST_POSTGRES_URL"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = required_env(
        POSTGRES_ENV, "a Postgres URL such as postgresql+psycopg://postgres@127.0.0.1/normlab_test"
    )
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/t.db"
        upgrade(url)
    else:
        url = request.getfixturevalue("postgres_url")
        truncate_all(url)
    yield url
    if request.param == "sqlite":
        engine_for(url).dispose()


@pytest.fixture
def session(db_url: str) -> Iterator[Session]:
    with session_factory(db_url)() as db_session:
        yield db_session
