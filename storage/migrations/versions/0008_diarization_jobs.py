"""offline diarization jobs and voiceprints

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03

``diarization_jobs``: one recording's diarization, queued and run by a job worker
(storage.diarization_jobs), with its progress, failure reason and result (turns and, when
asked for, the speaker-attributed transcript, as JSON).
``voiceprints``: an organisation's enrolled voices (speaker embeddings), one per name.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "diarization_jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "organisation_id", sa.Integer(), sa.ForeignKey("organisations.id"), nullable=False
        ),
        sa.Column("recording_id", sa.Integer(), sa.ForeignKey("recordings.id"), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("speakers", sa.Integer(), nullable=True),
        sa.Column("identify", sa.Boolean(), nullable=False),
        sa.Column("transcribe", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=30), nullable=True),
        sa.Column("error_reason", sa.String(length=30), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("started_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("finished_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    )
    op.create_index("ix_diarization_jobs_organisation_id", "diarization_jobs", ["organisation_id"])
    op.create_index("ix_diarization_jobs_recording_id", "diarization_jobs", ["recording_id"])
    op.create_index("ix_diarization_jobs_status", "diarization_jobs", ["status"])
    op.create_table(
        "voiceprints",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "organisation_id", sa.Integer(), sa.ForeignKey("organisations.id"), nullable=False
        ),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.UniqueConstraint("organisation_id", "name"),
    )
    op.create_index("ix_voiceprints_organisation_id", "voiceprints", ["organisation_id"])


def downgrade() -> None:
    op.drop_table("voiceprints")
    op.drop_table("diarization_jobs")
