"""metric rollups: pre-aggregated blocks of every metric series

Long series are bucketed from blocks of 64, 512, 4,096 and 32,768 steps (app.db.rollups)
instead of every point: 1,000,000 points → 1,000 buckets read ≈ 80,000 rows instead of
1,000,000. On Postgres the existing points are summarized here (one pass over metric_points,
which is locked against writes meanwhile); SQLite gets the empty table (its series are bucketed
from points). Workers must run this version's code once it is applied: older ones write points
without blocks (stop them, migrate, start the new ones).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 02:20:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# The summary query of app.db.rollups as it is at this revision (a migration does not import
# code that later revisions may change).
_BACKFILL = """
INSERT INTO metric_rollups (experiment_id, name, block_size, block, step_start, step_end, count,
    finite, vmin, vmax, vsum, first_step, first, last_step, last)
SELECT p.experiment_id, p.name, s.size, p.step / s.size, min(p.step), max(p.step), count(*),
       count(p.value), min(p.value), max(p.value), sum(p.value),
       min(p.step) FILTER (WHERE p.kind = 0),
       (min(ARRAY[p.step::float8, p.value]) FILTER (WHERE p.kind = 0))[2],
       max(p.step) FILTER (WHERE p.kind = 0),
       (max(ARRAY[p.step::float8, p.value]) FILTER (WHERE p.kind = 0))[2]
FROM metric_points p CROSS JOIN unnest(ARRAY[64, 512, 4096, 32768]) AS s(size)
GROUP BY 1, 2, 3, 4
"""


def upgrade() -> None:
    op.create_table(
        "metric_rollups",
        sa.Column("experiment_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("block_size", sa.Integer(), nullable=False),
        sa.Column("block", sa.BigInteger(), nullable=False),
        sa.Column("step_start", sa.BigInteger(), nullable=False),
        sa.Column("step_end", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("finite", sa.BigInteger(), nullable=False),
        sa.Column("vmin", sa.Float(), nullable=True),
        sa.Column("vmax", sa.Float(), nullable=True),
        sa.Column("vsum", sa.Float(), nullable=True),
        sa.Column("first_step", sa.BigInteger(), nullable=True),
        sa.Column("first", sa.Float(), nullable=True),
        sa.Column("last_step", sa.BigInteger(), nullable=True),
        sa.Column("last", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("experiment_id", "name", "block_size", "block"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # No point may be written between the backfill's snapshot and this commit: it would
        # have no block. (Upgrade the workers with the API: older ones write no blocks.)
        op.execute("LOCK TABLE metric_points IN SHARE MODE")
        op.execute(_BACKFILL)
        op.execute("ANALYZE metric_rollups")


def downgrade() -> None:
    op.drop_table("metric_rollups")
