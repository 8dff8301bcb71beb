"""``POST /v1/erasures/caller-number``: everything a caller's number left in the
organisation's calls, erased on request (billing.retention.erase_caller_number). The
number is never stored: calls are found by an HMAC of it under ``CALLER_ID_SECRET``,
which the workers share with the sidecar."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter
from pydantic import BaseModel, Field

from billing.api.deps import Admin, DbSession, Resources
from billing.api.errors import COMMON_RESPONSES, ServiceUnavailable
from billing.internal_api import caller_number_hash
from billing.retention import erase_caller_number

router = APIRouter(prefix="/v1/erasures", tags=["calls"], responses=COMMON_RESPONSES)


class CallerNumberIn(BaseModel):
    number: Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")]


class NumberErasureOut(BaseModel):
    calls_erased: int
    recordings_deleted: int
    files_deleted: int


@router.post(
    "/caller-number",
    response_model=NumberErasureOut,
    responses={503: {"description": "CALLER_ID_SECRET is not set on this sidecar"}},
    summary="Erase every call's recordings and number for a caller's number",
)
def erase_number(
    body: CallerNumberIn, principal: Admin, session: DbSession, resources: Resources
) -> NumberErasureOut:
    secret = resources.config.caller_id_secret
    if secret is None:
        raise ServiceUnavailable(
            "erasure by number needs CALLER_ID_SECRET (the workers' too)",
            reason="no_caller_id_secret",
        )
    report = erase_caller_number(
        session,
        resources.config.recordings_dir,
        principal.organisation_id,
        caller_number_hash(secret, body.number),
        principal.actor,
    )
    session.commit()
    return NumberErasureOut.model_validate(report, from_attributes=True)
