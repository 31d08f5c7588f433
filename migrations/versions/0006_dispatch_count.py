"""experiments: dispatch_count, how many times the experiment was sent to the broker

The reconciler re-sends only experiments whose message the broker lost (issue 11); the count
makes every re-send visible in the API and in the reconciler's log.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 18:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("experiments", sa.Column("dispatch_count", sa.Integer(), nullable=False,
                                           server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_column("dispatch_count")
