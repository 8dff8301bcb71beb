"""``/v1/users``: the organisation's users and their roles (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, delete, select

from billing.api.audit_trail import audit
from billing.api.deps import Admin, DbSession, Limit, Offset, Principal
from billing.api.errors import COMMON_RESPONSES, CONFLICT, NOT_FOUND, Conflict, NotFound
from storage.models import Agent, ApiKey, Role, RowId, User

router = APIRouter(prefix="/v1/users", tags=["users"], responses=COMMON_RESPONSES)

UserId = RowId
Email = Annotated[str, Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")]


class UserOut(BaseModel):
    id: int
    email: str
    role: Role
    created_at: datetime


class UserCreate(BaseModel):
    email: Email
    role: Role


class UserRoleChange(BaseModel):
    role: Role


@router.get("", response_model=list[UserOut], summary="List users")
def list_users(
    principal: Admin, session: DbSession, limit: Limit = 100, offset: Offset = 0
) -> list[User]:
    return list(
        session.exec(
            select(User)
            .where(User.organisation_id == principal.organisation_id)
            .order_by(col(User.id))
            .offset(offset)
            .limit(limit)
        ).all()
    )


@router.post("", response_model=UserOut, status_code=201, responses=CONFLICT, summary="Add a user")
def create_user(body: UserCreate, principal: Admin, session: DbSession) -> User:
    """A new user with ``role``; issue it a key with ``POST /v1/keys``. 409 if the email
    is taken in this organisation."""
    user = User(organisation_id=principal.organisation_id, email=body.email, role=body.role)
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        raise Conflict("a user with this email exists", reason="email_taken") from None
    audit(session, principal, "user.created", f"user:{user.id}", role=body.role)
    session.commit()
    session.refresh(user)
    return user


@router.patch(
    "/{user_id}",
    response_model=UserOut,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Change a user's role",
)
def change_role(
    user_id: UserId, body: UserRoleChange, principal: Admin, session: DbSession
) -> User:
    """409 when it would leave the organisation without an admin."""
    user = _get_user(session, principal, user_id)
    if user.role == Role.admin and body.role != Role.admin:
        _keep_an_admin(session, principal)
    previous = user.role
    user.role = body.role
    session.add(user)
    audit(session, principal, "user.role_changed", f"user:{user.id}", old=previous, new=body.role)
    session.commit()
    session.refresh(user)
    return user


@router.delete(
    "/{user_id}", status_code=204, responses={**NOT_FOUND, **CONFLICT}, summary="Remove a user"
)
def delete_user(user_id: UserId, principal: Admin, session: DbSession) -> Response:
    """Removes the user and its API keys. 409 when the user still owns agents (delete or
    reassign them first) or is the last admin."""
    user = _get_user(session, principal, user_id)
    if user.role == Role.admin:
        _keep_an_admin(session, principal)
    owned = session.exec(select(func.count()).where(Agent.owner_user_id == user.id)).one()
    if owned:
        raise Conflict(
            f"the user owns {owned} agent(s); reassign or delete them first", reason="owns_agents"
        )
    # the keys' rows reference the user; a removed user's keys must stop working anyway
    session.exec(delete(ApiKey).where(col(ApiKey.user_id) == user.id))
    audit(session, principal, "user.deleted", f"user:{user.id}", role=user.role)
    session.delete(user)
    session.commit()
    return Response(status_code=204)


def _get_user(session: Session, principal: Principal, user_id: int) -> User:
    user = session.exec(
        select(User).where(User.id == user_id, User.organisation_id == principal.organisation_id)
    ).first()
    if user is None:
        raise NotFound(f"user {user_id} not found")
    return user


def _keep_an_admin(session: Session, principal: Principal) -> None:
    # locks the organisation's admin rows on PostgreSQL, so two admins demoting each
    # other at once cannot both succeed; SQLite's write lock does the same
    admins = session.exec(
        select(User.id)
        .where(User.organisation_id == principal.organisation_id, User.role == Role.admin)
        .with_for_update()
    ).all()
    if len(admins) <= 1:
        raise Conflict("an organisation needs at least one admin", reason="last_admin")
