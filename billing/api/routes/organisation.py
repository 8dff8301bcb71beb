"""``/v1/organisation``: the caller's own organisation, its plan and balance."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from billing.api.audit_trail import audit
from billing.api.deps import Admin, BillingReader, DbSession
from billing.api.errors import COMMON_RESPONSES, NotFound
from billing.ledger import balance_minor
from storage.models import Organisation, Plan

router = APIRouter(prefix="/v1/organisation", tags=["organisation"], responses=COMMON_RESPONSES)


class PlanOut(BaseModel):
    name: str
    currency: str
    prepaid: bool
    max_agents: int
    max_concurrent_calls: int
    monthly_minutes: int
    price_per_minute_minor: int
    price_per_stt_minute_minor: int
    price_per_1k_llm_input_tokens_minor: int
    price_per_1k_llm_output_tokens_minor: int
    price_per_1k_tts_characters_minor: int


class OrganisationOut(BaseModel):
    id: int
    name: str
    currency: str
    created_at: datetime
    plan: PlanOut
    balance_minor: int
    recording_retention_days: int | None
    """Recordings older than this are deleted; null keeps them."""


class OrganisationPatch(BaseModel):
    recording_retention_days: int | None = Field(ge=1, le=3650)
    """Days a call recording is kept (1-3650); null keeps them until deleted."""


@router.get("", response_model=OrganisationOut, summary="Your organisation, plan and balance")
def get_organisation(principal: BillingReader, session: DbSession) -> OrganisationOut:
    organisation = session.get(Organisation, principal.organisation_id)
    plan = session.get(Plan, organisation.plan_id) if organisation is not None else None
    if organisation is None or plan is None or organisation.id is None:
        raise NotFound("organisation not found")
    amount_minor, currency = balance_minor(session, organisation.id)
    return OrganisationOut(
        id=organisation.id,
        name=organisation.name,
        currency=currency,
        created_at=organisation.created_at,
        plan=PlanOut.model_validate(plan, from_attributes=True),
        balance_minor=amount_minor,
        recording_retention_days=organisation.recording_retention_days,
    )


@router.patch("", response_model=OrganisationOut, summary="Change your organisation's policies")
def patch_organisation(
    body: OrganisationPatch, principal: Admin, session: DbSession
) -> OrganisationOut:
    """Sets how long recordings are kept: the sidecar's hourly sweep deletes older ones
    (with an audit entry)."""
    organisation = session.get(Organisation, principal.organisation_id)
    if organisation is None:
        raise NotFound("organisation not found")
    organisation.recording_retention_days = body.recording_retention_days
    session.add(organisation)
    audit(session, principal, "organisation.changed", f"organisation:{organisation.id}",
          recording_retention_days=body.recording_retention_days)  # fmt: skip
    session.commit()
    return get_organisation(principal, session)
