"""``/v1/agents``: voice agents and their profiles. Admins manage all of the organisation's
agents and alone assign tools, phone numbers and owners; agent users create and edit their
own (and see only those); viewers read them all. Every profile field is validated with the
schema the worker runs (``billing.agent_profile``): an unknown tool, voice or provider, a
regular expression that does not compile or a reply naming a slot it does not fill is 422."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from billing.admission import QuotaExceeded, check_can_create_agent
from billing.agent_profile import (
    TOOL_NAMES,
    AgentProfile,
    Dialogue,
    Providers,
    Telephony,
    Text,
    ToolName,
    Voices,
)
from billing.api.audit_trail import audit
from billing.api.deps import (
    AgentEditor,
    AnyMember,
    DbSession,
    Limit,
    Offset,
    Principal,
    Resources,
    ServiceCaller,
)
from billing.api.errors import (
    COMMON_RESPONSES,
    CONFLICT,
    NOT_FOUND,
    Conflict,
    ErrorBody,
    Forbidden,
    NotFound,
)
from billing.internal_api import AgentProfileOut, agent_profile_path
from storage.models import Agent, Call, Role, RowId, User

router = APIRouter(prefix="/v1/agents", tags=["agents"], responses=COMMON_RESPONSES)
internal_router = APIRouter(
    tags=["internal"], dependencies=[ServiceCaller], responses={401: {"model": ErrorBody}}
)

AgentId = RowId
MAX_CALLS_PER_NUMBER = 100_000
PhoneNumber = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")]

_ADMIN_ONLY_FIELDS = frozenset(
    {"tools", "phone_number", "max_concurrent_calls_per_number", "owner_user_id", "telephony"}
)
"""``telephony`` names where calls are transferred (calls the organisation pays for)."""
PROFILE_FIELDS = (
    "greeting",
    "goodbye",
    "language",
    "voices",
    "providers",
    "dialogue",
    "telephony",
)
"""Stored together in ``agents.profile`` (JSON); name, instructions and tools have columns."""
_PROFILE_KEYS = {"name", "instructions", "tools", *PROFILE_FIELDS}
Language = Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")]


class AgentOut(BaseModel):
    id: int
    owner_user_id: int
    name: str
    instructions: str
    tools: list[str]
    greeting: str
    goodbye: str
    language: str
    voices: Voices
    providers: Providers
    dialogue: Dialogue | None
    telephony: Telephony
    phone_number: str | None
    max_concurrent_calls_per_number: int | None
    created_at: datetime


class AgentCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    instructions: str = Field(default="", max_length=20_000)
    tools: list[ToolName] = Field(default_factory=list, max_length=100)
    greeting: Text | None = None
    goodbye: Text | None = None
    language: Language | None = None
    voices: Voices | None = None
    providers: Providers | None = None
    dialogue: Dialogue | None = None
    telephony: Telephony | None = None
    phone_number: PhoneNumber | None = None
    max_concurrent_calls_per_number: int | None = Field(default=None, ge=1, le=MAX_CALLS_PER_NUMBER)
    owner_user_id: RowId | None = Field(default=None, description="Defaults to you.")


class AgentPatch(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    instructions: str | None = Field(default=None, max_length=20_000)
    tools: list[ToolName] | None = Field(default=None, max_length=100)
    greeting: Text | None = None
    goodbye: Text | None = None
    language: Language | None = None
    voices: Voices | None = None
    providers: Providers | None = None
    dialogue: Dialogue | None = Field(
        default=None, description="``null`` removes it: the embedded engine's default offer."
    )
    telephony: Telephony | None = None
    phone_number: PhoneNumber | None = None
    max_concurrent_calls_per_number: int | None = Field(default=None, ge=1, le=MAX_CALLS_PER_NUMBER)
    owner_user_id: RowId | None = None


@router.get("", response_model=list[AgentOut], summary="List agents")
def list_agents(
    principal: AnyMember, session: DbSession, limit: Limit = 100, offset: Offset = 0
) -> list[AgentOut]:
    query = _visible_agents(principal).order_by(col(Agent.id)).offset(offset).limit(limit)
    agents = session.exec(query).all()
    return [_out(agent) for agent in agents]


@router.post(
    "",
    response_model=AgentOut,
    status_code=201,
    responses={
        **CONFLICT,
        **NOT_FOUND,
        403: {"model": ErrorBody, "description": "an agent user set an admin-only field"},
    },
    summary="Create an agent",
)
def create_agent(
    body: AgentCreate, principal: AgentEditor, session: DbSession, resources: Resources
) -> AgentOut:
    """409 with ``reason`` when the plan's agent quota is used up, or the phone number is
    taken (by any agent, of any organisation: the answer does not say whose)."""
    _check_admin_only_fields(principal, body.model_fields_set)
    owner_id = body.owner_user_id or principal.user_id
    _check_owner(session, principal, owner_id)
    try:
        # in this transaction, so the count it checks is the one the insert commits to
        check_can_create_agent(session, principal.organisation_id)
    except QuotaExceeded as exc:
        resources.metrics.quota_rejections.labels(exc.reason).inc()
        raise Conflict(exc.message, reason=exc.reason) from None
    profile = checked_profile(body.model_dump(include=_PROFILE_KEYS, exclude_none=True))
    agent = Agent(
        organisation_id=principal.organisation_id,
        owner_user_id=owner_id,
        name=profile.name,
        instructions=profile.instructions,
        tools=json.dumps(profile.tools),
        profile=_profile_json(profile),
        phone_number=body.phone_number,
        max_concurrent_calls_per_number=body.max_concurrent_calls_per_number,
    )
    session.add(agent)
    _flush_or_conflict(session)
    audit(session, principal, "agent.created", f"agent:{agent.id}", owner_user_id=owner_id)
    session.commit()
    session.refresh(agent)
    return _out(agent)


@router.get("/{agent_id}", response_model=AgentOut, responses=NOT_FOUND, summary="Get an agent")
def get_agent(agent_id: AgentId, principal: AnyMember, session: DbSession) -> AgentOut:
    return _out(_get_agent(session, principal, agent_id))


@router.patch(
    "/{agent_id}",
    response_model=AgentOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Change an agent",
)
def patch_agent(
    agent_id: AgentId, body: AgentPatch, principal: AgentEditor, session: DbSession
) -> AgentOut:
    """Changes the fields present in the body; ``phone_number: null`` unassigns it."""
    changed = body.model_fields_set
    _check_admin_only_fields(principal, changed)
    agent = _get_agent(session, principal, agent_id)
    # every lookup before the first change: a query after one would autoflush it, and a
    # taken phone number would then fail outside _flush_or_conflict (a 500, not a 409)
    if "owner_user_id" in changed and body.owner_user_id is not None:
        _check_owner(session, principal, body.owner_user_id)
    # the whole profile as it would be after the change, validated before anything changes
    merged = stored_profile(agent).model_dump()
    for field, value in body.model_dump(include=_PROFILE_KEYS & changed).items():
        if value is not None or field == "dialogue":  # dialogue: null removes it
            merged[field] = value
        elif field == "tools":
            merged[field] = []
    profile = checked_profile(merged)
    agent.name, agent.instructions = profile.name, profile.instructions
    agent.tools = json.dumps(profile.tools)
    agent.profile = _profile_json(profile)
    if "phone_number" in changed:
        agent.phone_number = body.phone_number
    if "max_concurrent_calls_per_number" in changed:
        agent.max_concurrent_calls_per_number = body.max_concurrent_calls_per_number
    if "owner_user_id" in changed and body.owner_user_id is not None:
        agent.owner_user_id = body.owner_user_id
    session.add(agent)
    _flush_or_conflict(session)
    # the names of the changed fields only: values may hold phone numbers
    audit(session, principal, "agent.changed", f"agent:{agent.id}", fields=sorted(changed))
    session.commit()
    session.refresh(agent)
    return _out(agent)


@router.delete("/{agent_id}", status_code=204, responses=NOT_FOUND, summary="Delete an agent")
def delete_agent(agent_id: AgentId, principal: AgentEditor, session: DbSession) -> Response:
    """The agent's calls stay (they are billing history), no longer linked to an agent."""
    agent = _get_agent(session, principal, agent_id)
    session.exec(update(Call).where(col(Call.agent_id) == agent.id).values(agent_id=None))
    audit(session, principal, "agent.deleted", f"agent:{agent.id}", name=agent.name)
    session.delete(agent)
    session.commit()
    return Response(status_code=204)


@internal_router.get(
    agent_profile_path("{agent_id}"),
    response_model=AgentProfileOut,
    responses=NOT_FOUND,
    summary="An agent's profile, for the worker that answers its call",
)
def get_agent_profile(agent_id: AgentId, session: DbSession) -> AgentProfileOut:
    agent = session.get(Agent, agent_id)
    if agent is None:
        raise NotFound(f"agent {agent_id} not found")
    assert agent.id is not None
    return AgentProfileOut(
        agent_id=agent.id, organisation_id=agent.organisation_id, profile=stored_profile(agent)
    )


def _visible_agents(principal: Principal) -> SelectOfScalar[Agent]:
    query = select(Agent).where(Agent.organisation_id == principal.organisation_id)
    if principal.role == Role.agent:
        query = query.where(Agent.owner_user_id == principal.user_id)
    return query


def _get_agent(session: Session, principal: Principal, agent_id: int) -> Agent:
    agent = session.exec(_visible_agents(principal).where(Agent.id == agent_id)).first()
    if agent is None:
        raise NotFound(f"agent {agent_id} not found")
    return agent


def _check_admin_only_fields(principal: Principal, fields: set[str]) -> None:
    # tools are *assigned* to agent users, and numbers and owners are the organisation's
    forbidden = sorted(_ADMIN_ONLY_FIELDS & fields)
    if forbidden and not principal.is_admin:
        raise Forbidden(f"only admins may set {', '.join(forbidden)}")


def _check_owner(session: Session, principal: Principal, owner_id: int) -> None:
    owner = session.exec(
        select(User.id).where(
            User.id == owner_id, User.organisation_id == principal.organisation_id
        )
    ).first()
    if owner is None:
        raise NotFound(f"user {owner_id} not found")


PHONE_NUMBER_TAKEN = "this phone number is not available"
"""A dialled number routes calls to exactly one agent in the whole service, so a tenant can
learn that a number is taken, but never whose it is: the answer is this one sentence,
whether the number is one of the tenant's own agents' or another organisation's."""


def _flush_or_conflict(session: Session) -> None:
    try:
        session.flush()
    except IntegrityError:
        # phone_number is the only unique column a client sets
        raise Conflict(PHONE_NUMBER_TAKEN, reason="phone_number_taken") from None


def checked_profile(fields: dict[str, object]) -> AgentProfile:
    """The profile ``fields`` make, checked as a whole (an intent may only use a tool the
    agent has); a 422 in FastAPI's validation shape when it is not valid."""
    try:
        return AgentProfile.model_validate(fields)
    except ValidationError as exc:
        issues = exc.errors(include_url=False, include_context=False, include_input=False)
        raise RequestValidationError(
            [{**issue, "loc": ("body", *issue["loc"])} for issue in issues]
        ) from None


def stored_profile(agent: Agent) -> AgentProfile:
    """The agent's profile as stored. Rows written before a field was validated keep what
    still validates: unknown tool names are dropped, an unreadable profile is the defaults."""
    try:
        tools = json.loads(agent.tools)
        extra = json.loads(agent.profile or "{}")
    except ValueError:
        tools, extra = [], {}
    known = [t for t in tools if t in TOOL_NAMES] if isinstance(tools, list) else []
    base = {"name": agent.name, "instructions": agent.instructions, "tools": known}
    try:
        return AgentProfile.model_validate({**(extra if isinstance(extra, dict) else {}), **base})
    except ValidationError:
        return AgentProfile.model_validate(base)


def _profile_json(profile: AgentProfile) -> str:
    return profile.model_dump_json(include=set(PROFILE_FIELDS))


def _out(agent: Agent) -> AgentOut:
    assert agent.id is not None
    profile = stored_profile(agent)
    return AgentOut(
        id=agent.id,
        owner_user_id=agent.owner_user_id,
        name=agent.name,
        instructions=agent.instructions,
        tools=list(profile.tools),
        greeting=profile.greeting,
        goodbye=profile.goodbye,
        language=profile.language,
        voices=profile.voices,
        providers=profile.providers,
        dialogue=profile.dialogue,
        telephony=profile.telephony,
        phone_number=agent.phone_number,
        max_concurrent_calls_per_number=agent.max_concurrent_calls_per_number,
        created_at=agent.created_at,
    )
