"""studies, and experiments.study_id / study_cell / study_seed (issue 14)

A study is a seed-paired factorial grid of experiments; its members are ordinary experiments
that carry the study's id, their cell index and their seed. ``results`` caches the results
document of a terminal study under ``results_key`` (the members' fingerprint).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 19:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("n_members", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("idempotency_key", sa.String(255), unique=True),
        sa.Column("request_hash", sa.String(64)),
        sa.Column("results_key", sa.String(64)),
        sa.Column("results", sa.Text()),
    )
    op.create_index("ix_studies_created", "studies", ["created_at", "id"])
    op.create_index("ix_studies_owner", "studies", ["owner"])
    op.add_column("experiments", sa.Column("study_id", sa.Uuid(), nullable=True))
    op.add_column("experiments", sa.Column("study_cell", sa.Integer(), nullable=True))
    op.add_column("experiments", sa.Column("study_seed", sa.BigInteger(), nullable=True))
    op.create_index("ix_experiments_study", "experiments", ["study_id", "study_cell", "study_seed"])


def downgrade() -> None:
    op.drop_index("ix_experiments_study", table_name="experiments")
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("study_seed")
        batch.drop_column("study_cell")
        batch.drop_column("study_id")
    op.drop_index("ix_studies_owner", table_name="studies")
    op.drop_index("ix_studies_created", table_name="studies")
    op.drop_table("studies")
