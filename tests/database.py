"""Test database helpers: emptying a shared Postgres database between tests."""

from __future__ import annotations

from sqlalchemy import text

from app.db.models import Base
from app.db.session import engine_for

# Every table of the schema, from the ORM models: a table added there is emptied too.
TABLES = ", ".join(table.name for table in Base.metadata.sorted_tables)


def truncate_all(url: str) -> None:
    """Empty every table (the schema and its migration stamp stay)."""
    with engine_for(url).begin() as connection:
        connection.execute(text(f"TRUNCATE {TABLES} CASCADE"))
