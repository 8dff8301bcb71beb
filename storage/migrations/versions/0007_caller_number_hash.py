"""calls can be found by their caller's number, without holding it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

``caller_number_hash``: HMAC-SHA256 of the caller's E.164 number under ``CALLER_ID_SECRET``
(billing.internal_api.caller_number_hash), so an erasure request for a number finds its
calls; the number itself is never stored.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch_op:
        batch_op.add_column(sa.Column("caller_number_hash", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_calls_caller_number_hash", ["caller_number_hash"])


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch_op:
        batch_op.drop_index("ix_calls_caller_number_hash")
        batch_op.drop_column("caller_number_hash")
