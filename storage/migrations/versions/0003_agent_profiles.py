"""agents carry their whole profile

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

An agent's greeting, goodbye, language, voices, providers and dialogue section
(``billing.agent_profile``) are one JSON document beside its name, instructions and tools;
agents made before it get the defaults (``{}``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.add_column(sa.Column("profile", sa.Text(), nullable=False, server_default="{}"))


def downgrade() -> None:
    with op.batch_alter_table("agents") as batch_op:
        batch_op.drop_column("profile")
