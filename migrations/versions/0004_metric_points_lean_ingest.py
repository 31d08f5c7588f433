"""metric points: no per-row foreign key; polling index without deduplication

Ingest is the hottest write path (every logged step of every run), and on Postgres two things
cost more per point than storing the point itself (docs/benchmarks.md, "ingest, second pass"):

- the foreign key to ``experiments``: Postgres checks it row by row (an index probe and a
  share lock on the experiment's row, for every point). Integrity now comes from the write
  protocol instead: every writer locks the experiment's row and checks its lease in the same
  transaction before it inserts (``app.db.metrics.insert_points``: no such experiment, nothing
  is written), and ``delete_finished`` deletes an experiment's points with it.
- B-tree deduplication on ``ix_metric_points_exp_step``: every step has one entry per metric
  with the same key, so each insert rewrote a posting list. The index is rebuilt with
  ``deduplicate_items = off`` (a larger index, cheaper inserts).

On SQLite (embedded mode) the table is rebuilt without the foreign key; the index option does
not exist there. Both rebuilds lock metric_points while they run.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 02:05:00.000000
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_FK = "metric_points_experiment_id_fkey"
_REFERENCES = "REFERENCES experiments (id) ON DELETE CASCADE"
_COLUMNS = "experiment_id, name, step, epoch, value, kind, wall_time"


def _postgres(foreign_key: bool, deduplicate: bool) -> None:
    if foreign_key:
        op.execute(f"ALTER TABLE metric_points ADD CONSTRAINT {_FK} "
                   f"FOREIGN KEY (experiment_id) {_REFERENCES}")
    else:
        op.execute(f"ALTER TABLE metric_points DROP CONSTRAINT IF EXISTS {_FK}")
    op.execute("DROP INDEX IF EXISTS ix_metric_points_exp_step")
    op.execute("CREATE INDEX ix_metric_points_exp_step ON metric_points (experiment_id, step)"
               f" WITH (deduplicate_items = {'on' if deduplicate else 'off'})")


def _sqlite(foreign_key: bool) -> None:
    references = f" {_REFERENCES}" if foreign_key else ""
    op.execute(
        "CREATE TABLE metric_points_new ("
        f"experiment_id CHAR(32) NOT NULL{references}, name VARCHAR(128) NOT NULL, "
        "step BIGINT NOT NULL, epoch INTEGER NOT NULL, value FLOAT, kind SMALLINT NOT NULL, "
        "wall_time FLOAT NOT NULL, PRIMARY KEY (experiment_id, name, step))"
    )
    op.execute(f"INSERT INTO metric_points_new ({_COLUMNS}) SELECT {_COLUMNS} FROM metric_points")
    op.execute("DROP TABLE metric_points")
    op.execute("ALTER TABLE metric_points_new RENAME TO metric_points")
    op.execute("CREATE INDEX ix_metric_points_exp_step ON metric_points (experiment_id, step)")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgres(foreign_key=False, deduplicate=False)
    else:
        _sqlite(foreign_key=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _postgres(foreign_key=True, deduplicate=True)
    else:
        _sqlite(foreign_key=True)
