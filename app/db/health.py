"""Database readiness: reachable and migrated to the newest schema."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.db.migrate import check_migrated


def check_database(session: Session, url: str) -> None:
    session.execute(text("SELECT 1"))
    check_migrated(url)
