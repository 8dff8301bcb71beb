"""organisations say how long their recordings are kept

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

``recording_retention_days``: recordings older than this are deleted by the sidecar's
retention sweep (billing.retention); empty keeps them until deleted by hand.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("organisations") as batch_op:
        batch_op.add_column(sa.Column("recording_retention_days", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("organisations") as batch_op:
        batch_op.drop_column("recording_retention_days")
