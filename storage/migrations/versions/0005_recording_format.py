"""recordings say how they are sealed and what they hold

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``key_id`` (the recording key the file is sealed with: storage.recording_files; empty for
files stored as they came), ``sample_rate``, ``channels`` and ``duration_s``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("recordings") as batch_op:
        batch_op.add_column(sa.Column("key_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("sample_rate", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("channels", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("duration_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("recordings") as batch_op:
        for name in ("duration_s", "channels", "sample_rate", "key_id"):
            batch_op.drop_column(name)
