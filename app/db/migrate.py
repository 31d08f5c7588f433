"""Schema migrations (Alembic) driven from code: ``normlab migrate`` and the startup check."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.db.session import engine_for

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


class SchemaNotMigratedError(RuntimeError):
    pass


def _config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with engine_for(url).begin() as connection:
        cfg = _config(url)
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config("sqlite://")).get_current_head()


def current_revision(url: str) -> str | None:
    with engine_for(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def check_migrated(url: str) -> None:
    """Raise a clear error unless the database schema is at the newest revision."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise SchemaNotMigratedError(
            f"database schema is at revision {current or 'none (empty database)'}, "
            f"this NormLab needs {head}: run `normlab migrate` first"
        )
