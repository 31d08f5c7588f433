"""`normlab keys create|list|revoke`: manage API keys directly in the database."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from app.core.config import get_settings
from app.db import keys
from app.db.migrate import upgrade
from app.db.session import session_scope


def _url() -> str:
    url = get_settings().database_url
    if url.startswith("sqlite"):
        upgrade(url)  # the embedded database may not exist yet
    return url


def create(owner: str, admin: bool) -> None:
    with session_scope(_url()) as session:
        try:
            key = keys.create(session, owner=owner, admin=admin)
        except ValueError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from exc
    typer.echo(key)
    typer.echo("Store this key now: it is not shown again.", err=True)


def show() -> None:
    table = Table("key id", "owner", "admin", "created", "revoked")
    with session_scope(_url()) as session:
        for row in keys.list_keys(session):
            table.add_row(row.key_id, row.owner, "yes" if row.admin else "",
                          row.created_at.isoformat(timespec="seconds"),
                          row.revoked_at.isoformat(timespec="seconds") if row.revoked_at else "")
    Console().print(table)


def revoke(key_id: str) -> None:
    with session_scope(_url()) as session:
        if not keys.revoke(session, key_id):
            typer.echo(f"no active key {key_id}", err=True)
            raise typer.Exit(1)
    typer.echo(f"revoked {key_id}")
