"""metric points: covering primary key (Postgres)

The primary key (experiment_id, name, step) also carries ``value`` and ``kind`` (INCLUDE), so a
downsampled series (app.db.series: one range scan per bucket, plus first/last probes) reads the
index alone, never the table: 1,000,000 points → 1,000 buckets went from ≈190 ms to ≈125 ms in
the database (docs/benchmarks.md, "data path"). Widening the existing key instead of adding a
second covering index keeps ingest as fast as before: every inserted point updates the same
number of indexes.

Postgres only (INCLUDE is a Postgres feature); on SQLite this revision changes nothing. The key
is rebuilt in one ALTER TABLE, which holds an exclusive lock on metric_points while it runs.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 00:20:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_KEY = "PRIMARY KEY (experiment_id, name, step)"


def _rebuild_key(include: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        "ALTER TABLE metric_points DROP CONSTRAINT metric_points_pkey, "
        f"ADD CONSTRAINT metric_points_pkey {_KEY}{include}"
    )


def upgrade() -> None:
    _rebuild_key(" INCLUDE (value, kind)")


def downgrade() -> None:
    _rebuild_key("")
