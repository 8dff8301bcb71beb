"""money and quantities are 64-bit

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

0001 made money and quantity columns INTEGER, which is 32-bit on PostgreSQL: payments from
2**31 minor units, balances past ~21 million major units and one event with a quantity of
2**31 failed with a server error. SQLite's INTEGER was 64-bit already; the declared type is
changed there too (a table rebuild), so both databases match the models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS: dict[str, tuple[str, ...]] = {
    "plans": (
        "price_per_minute_minor",
        "price_per_stt_minute_minor",
        "price_per_1k_llm_input_tokens_minor",
        "price_per_1k_llm_output_tokens_minor",
        "price_per_1k_tts_characters_minor",
    ),
    "organisations": ("balance_minor",),
    "billing_events": ("quantity", "amount_minor", "balance_after_minor"),
    "payments": ("amount_minor", "balance_after_minor"),
    "usage_records": ("quantity",),
    "recordings": ("size_bytes",),
}


def _retype(old: type[sa.types.TypeEngine], new: type[sa.types.TypeEngine]) -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column, existing_type=old(), type_=new(), existing_nullable=False
                )


def upgrade() -> None:
    _retype(sa.Integer, sa.BigInteger)


def downgrade() -> None:
    # loses nothing only while every value fits 32 bits; PostgreSQL refuses otherwise
    _retype(sa.BigInteger, sa.Integer)
