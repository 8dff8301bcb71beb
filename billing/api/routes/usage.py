"""``/v1/usage``: what the organisation used and was charged in one calendar month."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from billing.api.deps import BillingReader, DbSession
from billing.api.errors import COMMON_RESPONSES
from billing.ledger import monthly_usage
from storage.models import UsageKind, utcnow

router = APIRouter(prefix="/v1/usage", tags=["billing"], responses=COMMON_RESPONSES)


class UsageOut(BaseModel):
    year: int
    month: int
    quantities: dict[UsageKind, int]
    """Every usage kind, in its own unit (seconds, milliseconds, tokens, characters)."""
    amount_minor: int
    currency: str


@router.get("", response_model=UsageOut, summary="Usage and charges for one month (UTC)")
def get_usage(
    principal: BillingReader,
    session: DbSession,
    year: Annotated[int | None, Query(ge=2000, le=9999)] = None,
    month: Annotated[int | None, Query(ge=1, le=12)] = None,
) -> UsageOut:
    """The current month unless ``year`` and ``month`` say otherwise."""
    now = utcnow()
    year = now.year if year is None else year
    month = now.month if month is None else month
    usage = monthly_usage(session, principal.organisation_id, year, month)
    return UsageOut(
        year=year,
        month=month,
        quantities=usage.quantities,
        amount_minor=usage.amount_minor,
        currency=usage.currency,
    )
