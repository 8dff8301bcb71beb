"""calls say which SIP call they were and which way they went

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

``sip_call_id`` (the SIP service's call id, to find the call in the trunk's and carrier's
logs) and ``direction`` (``inbound`` or ``outbound``); both empty for browser and
simulated calls and for calls made before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calls") as batch_op:
        batch_op.add_column(sa.Column("sip_call_id", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("direction", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("calls") as batch_op:
        batch_op.drop_column("direction")
        batch_op.drop_column("sip_call_id")
