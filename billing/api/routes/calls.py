"""``/v1/calls``: the organisation's calls. Agent users see the calls of their own agents."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from billing.api.deps import Admin, AnyMember, DbSession, Limit, Offset, Principal, Resources
from billing.api.errors import COMMON_RESPONSES, NOT_FOUND, NotFound
from billing.retention import erase_call
from storage.models import Agent, Call, Role, RowId

router = APIRouter(prefix="/v1/calls", tags=["calls"], responses=COMMON_RESPONSES)

CallId = Annotated[str, Path(min_length=1, max_length=64)]


class CallOut(BaseModel):
    id: str
    agent_id: int | None
    caller_number_masked: str | None
    dialled_number: str | None
    sip_call_id: str | None
    direction: str | None
    started_at: datetime
    ended_at: datetime | None
    status: str


@router.get("", response_model=list[CallOut], summary="List calls, newest first")
def list_calls(
    principal: AnyMember,
    session: DbSession,
    agent_id: RowId | None = None,
    status: Annotated[str | None, Query(max_length=16)] = None,
    started_after: datetime | None = None,
    started_before: datetime | None = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[Call]:
    query = visible_calls(principal)
    if agent_id is not None:
        query = query.where(Call.agent_id == agent_id)
    if status is not None:
        query = query.where(Call.status == status)
    if started_after is not None:
        query = query.where(col(Call.started_at) >= started_after)
    if started_before is not None:
        query = query.where(col(Call.started_at) < started_before)
    query = query.order_by(col(Call.started_at).desc(), col(Call.id)).offset(offset).limit(limit)
    return list(session.exec(query).all())


@router.get("/{call_id}", response_model=CallOut, responses=NOT_FOUND, summary="Get a call")
def get_call(call_id: CallId, principal: AnyMember, session: DbSession) -> Call:
    return get_visible_call(session, principal, call_id)


class ErasureOut(BaseModel):
    call_id: str
    recordings_deleted: int
    files_deleted: int
    caller_number_removed: bool


@router.post(
    "/{call_id}/erase",
    response_model=ErasureOut,
    responses=NOT_FOUND,
    summary="Erase a call's recordings and caller number",
)
def erase_call_data(
    call_id: CallId, principal: Admin, session: DbSession, resources: Resources
) -> ErasureOut:
    """Deletes the call's recordings (files and rows) and the caller's masked number on
    its row, and says what was removed; what the call cost stays in the ledger. Erasing
    again removes nothing more and says so."""
    report = erase_call(
        session,
        resources.config.recordings_dir,
        principal.organisation_id,
        call_id,
        principal.actor,
    )
    if report is None:
        raise NotFound(f"call {call_id} not found")
    session.commit()
    return ErasureOut.model_validate(report, from_attributes=True)


def visible_calls(principal: Principal) -> SelectOfScalar[Call]:
    """The calls ``principal`` may see: its organisation's, and for an agent user only
    those of agents it owns."""
    query = select(Call).where(Call.organisation_id == principal.organisation_id)
    if principal.role == Role.agent:
        query = query.join(Agent, col(Agent.id) == Call.agent_id).where(
            Agent.owner_user_id == principal.user_id
        )
    return query


def get_visible_call(session: Session, principal: Principal, call_id: str) -> Call:
    """The call, or NotFound when it does not exist or ``principal`` may not see it."""
    call = session.exec(visible_calls(principal).where(Call.id == call_id)).first()
    if call is None:
        raise NotFound(f"call {call_id} not found")
    return call
