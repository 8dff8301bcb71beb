"""Database tables (SQLModel). The schema is created and changed only by the Alembic
migrations in ``storage/migrations``; these classes must match them (a test checks).

Money is integer minor units (cents) with an ISO 4217 currency, never float. Usage
quantities are integers in the unit their ``kind`` names (seconds, milliseconds, tokens,
characters). Both are 64-bit columns (``Money``/``Quantity`` fields below); the bounds that
keep them far from overflow are the billing package's (``billing.pricing``).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Annotated, Any

from annotated_types import Ge, Le
from sqlalchemy import BigInteger, Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

ROW_ID_MAX = 2**31 - 1
"""Integer primary keys are 32-bit INTEGER columns on PostgreSQL: no id above this exists,
so the API refuses larger ones as invalid (422) instead of asking the database."""
RowId = Annotated[int, Ge(1), Le(ROW_ID_MAX)]
"""Every id a client names (in a path, a query or a body): 1..2**31-1, the range of the
id columns, so a larger one is a 422 at the API's edge and never reaches the database."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def Money(default: Any = ...) -> Any:  # noqa: N802  (reads like a type)
    """A money column: integer minor units, BIGINT, required unless ``default`` is given."""
    return Field(default=default, sa_type=BigInteger, nullable=False)


def Quantity(default: Any = ...) -> Any:  # noqa: N802
    """A usage quantity or size column: BIGINT, required unless ``default`` is given."""
    return Field(default=default, sa_type=BigInteger, nullable=False)


class Role(enum.StrEnum):
    admin = "admin"
    agent = "agent"
    viewer = "viewer"


class UsageKind(enum.StrEnum):
    """What a usage record or billing event measures, and in which integer unit."""

    call_seconds = "call_seconds"
    stt_audio_ms = "stt_audio_ms"
    llm_input_tokens = "llm_input_tokens"
    llm_output_tokens = "llm_output_tokens"
    tts_characters = "tts_characters"


class Plan(SQLModel, table=True):
    __tablename__ = "plans"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=100)
    currency: str = Field(max_length=3)
    max_agents: int
    max_concurrent_calls: int
    monthly_minutes: int
    prepaid: bool = False
    """Prepaid plans need a positive balance to admit a call."""
    # prices, in minor units per block of units (see billing.pricing)
    price_per_minute_minor: int = Money(0)
    price_per_stt_minute_minor: int = Money(0)
    price_per_1k_llm_input_tokens_minor: int = Money(0)
    price_per_1k_llm_output_tokens_minor: int = Money(0)
    price_per_1k_tts_characters_minor: int = Money(0)


class Organisation(SQLModel, table=True):
    __tablename__ = "organisations"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    plan_id: int = Field(foreign_key="plans.id")
    currency: str = Field(max_length=3)
    balance_minor: int = Money(0)
    """Prepaid balance: payments add, billing events subtract."""
    recording_retention_days: int | None = None
    """Recordings older than this are deleted by the retention sweep; None keeps them."""
    created_at: datetime = Field(default_factory=utcnow)


class User(SQLModel, table=True):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("organisation_id", "email"),)

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    email: str = Field(max_length=320)
    role: Role
    created_at: datetime = Field(default_factory=utcnow)


class ApiKey(SQLModel, table=True):
    """The key itself is shown once; only ``prefix`` (for lookup) and a salted SHA-256
    hash are stored."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    user_id: int = Field(foreign_key="users.id", index=True)
    prefix: str = Field(unique=True, max_length=32)
    salt: str = Field(max_length=64)
    key_hash: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None


class Agent(SQLModel, table=True):
    __tablename__ = "agents"

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    owner_user_id: int = Field(foreign_key="users.id")
    name: str = Field(max_length=200)
    instructions: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    tools: str = Field(default="[]", sa_column=Column(Text, nullable=False, default="[]"))
    """JSON list of the function tool names this agent may use."""
    profile: str = Field(
        default="{}", sa_column=Column(Text, nullable=False, default="{}", server_default="{}")
    )
    """JSON: the rest of its profile (greeting, goodbye, language, voices, providers,
    dialogue; ``billing.agent_profile``)."""
    phone_number: str | None = Field(default=None, unique=True, max_length=32)
    """The dialled (trunk) number that reaches this agent over SIP, E.164."""
    max_concurrent_calls_per_number: int | None = None
    created_at: datetime = Field(default_factory=utcnow)


class Call(SQLModel, table=True):
    __tablename__ = "calls"

    id: str = Field(primary_key=True, max_length=64)
    """The LiveKit job id (or a simulator-made id)."""
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    agent_id: int | None = Field(default=None, foreign_key="agents.id")
    caller_number_masked: str | None = Field(default=None, max_length=32)
    dialled_number: str | None = Field(default=None, max_length=32)
    caller_number_hash: str | None = Field(default=None, max_length=64, index=True)
    """HMAC of the caller's number (billing.internal_api.caller_number_hash): erasure by
    number finds the call; the number is never stored."""
    sip_call_id: str | None = Field(default=None, max_length=64)
    """The SIP service's call id (``sip.callID``), to find the call in trunk logs."""
    direction: str | None = Field(default=None, max_length=8)
    """``inbound`` or ``outbound`` for a phone call; None for a browser or simulated one."""
    started_at: datetime = Field(default_factory=utcnow)
    ended_at: datetime | None = None
    status: str = Field(default="active", max_length=16)


class UsageRecord(SQLModel, table=True):
    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_org_time", "organisation_id", "recorded_at"),)

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id")
    call_id: str = Field(foreign_key="calls.id", index=True)
    kind: UsageKind
    quantity: int = Quantity()
    recorded_at: datetime = Field(default_factory=utcnow)


class BillingEvent(SQLModel, table=True):
    """One priced piece of usage. Applying an event whose ``idempotency_key`` exists
    changes nothing and returns the stored event."""

    __tablename__ = "billing_events"

    id: int | None = Field(default=None, primary_key=True)
    idempotency_key: str = Field(unique=True, max_length=200)
    """``{call_id}:{kind}:{sequence}``."""
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    call_id: str = Field(max_length=64, index=True)
    kind: UsageKind
    quantity: int = Quantity()
    amount_minor: int = Money()
    currency: str = Field(max_length=3)
    balance_after_minor: int = Money()
    created_at: datetime = Field(default_factory=utcnow)


class Payment(SQLModel, table=True):
    __tablename__ = "payments"
    __table_args__ = (UniqueConstraint("provider", "provider_payment_id"),)

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    provider: str = Field(max_length=50)
    provider_payment_id: str = Field(max_length=200)
    amount_minor: int = Money()
    currency: str = Field(max_length=3)
    balance_after_minor: int = Money()
    received_at: datetime = Field(default_factory=utcnow)


class Recording(SQLModel, table=True):
    __tablename__ = "recordings"

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    call_id: str = Field(max_length=64, index=True)
    path: str = Field(max_length=500)
    size_bytes: int = Quantity()
    sha256: str = Field(max_length=64)
    key_id: str | None = Field(default=None, max_length=64)
    """The recording key the file is sealed with (storage.recording_files); None: the
    file is stored as it came."""
    sample_rate: int | None = None
    channels: int | None = None
    duration_s: float | None = None
    created_at: datetime = Field(default_factory=utcnow)
    deleted_at: datetime | None = None


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class DiarizationJob(SQLModel, table=True):
    """Who spoke when in one recording, worked out offline (storage.diarization_jobs)."""

    __tablename__ = "diarization_jobs"

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    recording_id: int = Field(foreign_key="recordings.id", index=True)
    status: str = Field(default=JobStatus.queued.value, max_length=20, index=True)
    """A :class:`JobStatus`."""
    progress: float = 0.0
    """Share done, 0-1."""
    speakers: int | None = None
    """How many voices there are, when the submitter knew; None: found by clustering."""
    identify: bool = False
    """Name speakers whose voice matches one of the organisation's voiceprints."""
    transcribe: bool = False
    """Also transcribe it, each word given to the speaker talking at it."""
    attempts: int = 0
    backend: str | None = Field(default=None, max_length=30)
    error_reason: str | None = Field(default=None, max_length=30)
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    """JSON: ``{"turns": [{"start_s", "end_s", "speaker"}, ...], "transcript": [{"start_s",
    "end_s", "speaker", "text"}, ...] or null}``."""
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Voiceprint(SQLModel, table=True):
    """A known person's voice (a speaker embedding), to name them in diarizations."""

    __tablename__ = "voiceprints"
    __table_args__ = (UniqueConstraint("organisation_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    name: str = Field(max_length=100)
    embedding: bytes = Field(sa_type=LargeBinary, nullable=False)
    created_at: datetime = Field(default_factory=utcnow)


class Notification(SQLModel, table=True):
    """Sent to an organisation's admins; ``dedupe_key`` makes "notify once" a constraint."""

    __tablename__ = "notifications"

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    kind: str = Field(max_length=50)
    dedupe_key: str = Field(unique=True, max_length=200)
    message: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = Field(default_factory=utcnow)
    delivered_at: datetime | None = None
    delivery_attempts: int = 0


class AuditLog(SQLModel, table=True):
    """Every change to money, keys, users and plans, with who made it."""

    __tablename__ = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    organisation_id: int = Field(foreign_key="organisations.id", index=True)
    actor: str = Field(max_length=100)
    """``user:<id>``, ``key:<prefix>``, ``webhook:<provider>`` or ``system``."""
    action: str = Field(max_length=100)
    subject: str = Field(max_length=200)
    detail: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    created_at: datetime = Field(default_factory=utcnow)
