"""``/v1/balance``: the organisation's balance now."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from billing.api.deps import BillingReader, DbSession
from billing.api.errors import COMMON_RESPONSES
from billing.ledger import balance_minor

router = APIRouter(prefix="/v1/balance", tags=["billing"], responses=COMMON_RESPONSES)


class BalanceOut(BaseModel):
    balance_minor: int
    """Integer minor units (cents); negative when usage exceeds payments."""
    currency: str


@router.get("", response_model=BalanceOut, summary="The organisation's balance")
def get_balance(principal: BillingReader, session: DbSession) -> BalanceOut:
    amount_minor, currency = balance_minor(session, principal.organisation_id)
    return BalanceOut(balance_minor=amount_minor, currency=currency)
