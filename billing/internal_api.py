"""The workers' contract with the sidecar: the ``/internal`` paths and the request and
response bodies, in one place. The sidecar's routes (``billing.api.routes``) serve exactly
these models and the worker's clients (``agent.sidecar_client``, the outbox sender, the
worker heartbeat) send and read them, so the two sides cannot drift apart.

Every ``/internal`` request carries ``Authorization: Bearer <SIDECAR_SERVICE_TOKEN>``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    model_validator,
)

from billing.agent_profile import AgentProfile
from billing.pricing import MAX_CALL_ID_CHARS, MAX_QUANTITY, CallFacts
from storage.models import RowId, UsageKind

ADMISSIONS_PATH = "/internal/admissions"
BILLING_EVENTS_PATH = "/internal/billing-events"
WORKER_HEARTBEAT_PATH = "/internal/workers/heartbeat"
RECORDINGS_UPLOAD_PATH = "/internal/recordings/"


def recording_upload_path(organisation_id: int, call_id: str) -> str:
    """Where a worker puts a call's sealed recording (``PUT``, the file as the body)."""
    return f"{RECORDINGS_UPLOAD_PATH}{organisation_id}/{call_id}"


MAX_EVENTS_PER_BATCH = 500


def agent_profile_path(agent_id: int | str) -> str:
    """Where the worker fetches an agent's profile (``GET``; answers :class:`AgentProfileOut`)."""
    return f"/internal/agents/{agent_id}/profile"


QUEUE_LEAVE_PATH = f"{ADMISSIONS_PATH}/queue/leave"


def caller_number_hash(secret: str, number: str) -> str:
    """What the worker stores instead of a caller's number so erasure by number can find
    the calls (the sidecar computes the same from the number in the request): HMAC-SHA256
    of the number's digits under ``CALLER_ID_SECRET``, which both sides share."""
    digits = re.sub(r"\D", "", number)
    return hmac.new(secret.encode(), digits.encode(), hashlib.sha256).hexdigest()


def lease_path(lease_id: str) -> str:
    """Where a lease is released (``DELETE``)."""
    return f"{ADMISSIONS_PATH}/{lease_id}"


def lease_heartbeat_path(lease_id: str) -> str:
    """Where a lease is kept alive (``POST``)."""
    return f"{lease_path(lease_id)}/heartbeat"


class AdmissionIn(BaseModel):
    call_id: str = Field(min_length=1, max_length=64)
    agent_id: RowId | None = None
    dialled_number: str | None = Field(default=None, max_length=32)
    organisation_id: RowId | None = None
    resume: bool = Field(
        default=False,
        description="The call is live but lost its lease (or never had one): take its "
        "slots again, over the limits if need be. Never refused for a quota.",
    )
    hold: bool = Field(
        default=False,
        description="The caller can wait: at the concurrency limit the call is queued "
        "(202 with its position) instead of refused. Ask again at least every 10 s to keep "
        "the place; the head of the queue is admitted when a slot frees.",
    )


class AdmissionOut(BaseModel):
    """The decision (200 admitted, 202 queued, 409 refused)."""

    admitted: bool
    lease_id: str | None
    """``<organisation id>:<call id>``: heartbeat and release exactly this."""
    reason: str | None
    message: str
    """What to tell the caller when refused."""
    organisation_id: int | None = None
    """Admitted: the organisation billed for the call, however it was found."""
    agent_id: int | None = None
    """Admitted: the agent that answers it (named, or reached on the dialled number)."""
    position: int | None = None
    """Queued: callers ahead of this one (0: next)."""


class QueueLeaveIn(BaseModel):
    """A queued caller that stopped waiting (hung up, or waited too long)."""

    call_id: str = Field(min_length=1, max_length=64)
    organisation_id: RowId


class LeaseOut(BaseModel):
    lease_id: str
    ttl_s: float
    """The lease lives this long without a heartbeat: heartbeat well within it."""


_LARGEST_QUANTITY = max(MAX_QUANTITY.values())
_MASKED_OR_E164 = r"^[+*0-9]{1,32}$"


class CallFactsIn(BaseModel):
    """The call an event belongs to, for its row in ``calls`` (see ``CallFacts``)."""

    model_config = ConfigDict(extra="forbid")

    started_at: AwareDatetime
    caller_number_masked: str | None = Field(default=None, pattern=_MASKED_OR_E164)
    """Masked by the worker (``+*******4567``); the sidecar never sees a caller's number."""
    dialled_number: str | None = Field(default=None, pattern=r"^\+?[0-9]{1,31}$")
    caller_number_hash: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    sip_call_id: str | None = Field(default=None, min_length=1, max_length=64)
    direction: Literal["inbound", "outbound"] | None = None
    ended_at: AwareDatetime | None = None
    status: Literal["ended", "failed"] | None = None

    @model_validator(mode="after")
    def _ended_together(self) -> CallFactsIn:
        if (self.ended_at is None) != (self.status is None):
            raise ValueError("ended_at and status come together")
        if self.ended_at is not None and self.ended_at < self.started_at:
            raise ValueError("a call cannot end before it started")
        return self

    @classmethod
    def from_facts(cls, facts: CallFacts) -> CallFactsIn:
        def at(t: float | None) -> datetime | None:
            return None if t is None else datetime.fromtimestamp(t, UTC)

        return cls.model_validate(
            {
                "started_at": at(facts.started_at),
                "caller_number_masked": facts.caller_number_masked,
                "dialled_number": facts.dialled_number,
                "caller_number_hash": facts.caller_number_hash,
                "sip_call_id": facts.sip_call_id,
                "direction": facts.direction,
                "ended_at": at(facts.ended_at),
                "status": facts.status,
            }
        )

    def to_facts(self) -> CallFacts:
        return CallFacts(
            started_at=self.started_at.timestamp(),
            caller_number_masked=self.caller_number_masked,
            dialled_number=self.dialled_number,
            caller_number_hash=self.caller_number_hash,
            sip_call_id=self.sip_call_id,
            direction=self.direction,
            ended_at=self.ended_at.timestamp() if self.ended_at else None,
            status=self.status,
        )


class BillingEventIn(BaseModel):
    idempotency_key: str = Field(min_length=1, max_length=200)
    organisation_id: RowId
    call_id: str = Field(min_length=1, max_length=MAX_CALL_ID_CHARS)
    kind: UsageKind
    agent_id: RowId | None = Field(
        default=None,
        description="The agent that answered the call: recorded on the call when the "
        "call is new to the sidecar and the agent is the organisation's.",
    )
    call: CallFactsIn | None = Field(
        default=None,
        description="The call's facts: recorded on its row (a new call's start, caller and "
        "number; the last events' end and status).",
    )
    quantity: Annotated[
        int,
        Field(
            ge=0,
            le=_LARGEST_QUANTITY,
            strict=True,
            description="In the kind's unit, at most: "
            + ", ".join(f"{kind.value} {limit}" for kind, limit in MAX_QUANTITY.items()),
        ),
    ]


class BillingEventsIn(BaseModel):
    # documented as BillingEventIn, validated one by one by the route, so one bad event is
    # one rejected result and never a 422 for its whole batch
    events: list[SkipValidation[BillingEventIn]] = Field(max_length=MAX_EVENTS_PER_BATCH)


class BillingEventResult(BaseModel):
    idempotency_key: str | None
    """None when the event had no valid key."""
    status: Literal["applied", "duplicate", "rejected"]
    reason: str | None = None
    """Why it was rejected: a stable word (``invalid_event``, ``unknown_organisation``,
    ``call_of_another_organisation``, ``amount_too_large``, ``plan_misconfigured``,
    ``currency_mismatch``, ``balance_out_of_range``)."""
    permanent: bool | None = None
    """For a rejection: True when sending the event again can never succeed."""
    detail: str | None = None


class BillingEventsOut(BaseModel):
    results: list[BillingEventResult]
    """One per event sent, in the same order."""


class WorkerHeartbeatIn(BaseModel):
    worker_id: str = Field(min_length=1, max_length=100)


class WorkerHeartbeatOut(BaseModel):
    live_workers: int
    """Workers this sidecar process heard from recently, this one included."""
    shared_leases: bool
    """False without Redis: leases are per sidecar process."""


class AgentProfileOut(BaseModel):
    """An agent's profile, as the worker runs it."""

    agent_id: int
    organisation_id: int
    profile: AgentProfile
