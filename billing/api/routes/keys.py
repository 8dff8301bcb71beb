"""``/v1/keys``: API keys. Admins manage every key of the organisation; agent and viewer
users see, rotate and revoke only their own. A key's plaintext is in the response that
creates it and nowhere else, ever."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Response
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from billing.api.audit_trail import audit
from billing.api.deps import Admin, AnyMember, DbSession, Limit, Offset, Principal
from billing.api.errors import COMMON_RESPONSES, CONFLICT, NOT_FOUND, Conflict, NotFound
from billing.keys import KeyRevokedError, issue_key, revoke_key, rotate_key
from storage.models import ApiKey, RowId, User

router = APIRouter(prefix="/v1/keys", tags=["keys"], responses=COMMON_RESPONSES)

KeyId = RowId


class KeyOut(BaseModel):
    """A key without its secret: the prefix identifies it."""

    id: int
    user_id: int
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


class IssuedKey(BaseModel):
    key: KeyOut
    api_key: str = Field(description="The key itself. Shown this once; store it now.")


class KeyCreate(BaseModel):
    user_id: RowId | None = Field(default=None, description="Defaults to your own user.")


@router.get("", response_model=list[KeyOut], summary="List keys (admins: all; others: own)")
def list_keys(
    principal: AnyMember, session: DbSession, limit: Limit = 100, offset: Offset = 0
) -> list[ApiKey]:
    query = select(ApiKey).where(ApiKey.organisation_id == principal.organisation_id)
    if not principal.is_admin:
        query = query.where(ApiKey.user_id == principal.user_id)
    return list(session.exec(query.order_by(col(ApiKey.id)).offset(offset).limit(limit)).all())


@router.post(
    "", response_model=IssuedKey, status_code=201, responses=NOT_FOUND, summary="Issue a key"
)
def create_key(body: KeyCreate, principal: Admin, session: DbSession) -> IssuedKey:
    user_id = body.user_id or principal.user_id
    user = session.exec(
        select(User).where(User.id == user_id, User.organisation_id == principal.organisation_id)
    ).first()
    if user is None:
        raise NotFound(f"user {user_id} not found")
    api_key, plaintext = issue_key(session, user)
    audit(session, principal, "key.issued", f"key:{api_key.prefix}", user_id=user.id)
    session.commit()
    session.refresh(api_key)
    return IssuedKey(key=KeyOut.model_validate(api_key, from_attributes=True), api_key=plaintext)


@router.post(
    "/{key_id}/rotate",
    response_model=IssuedKey,
    status_code=201,
    responses={**NOT_FOUND, **CONFLICT},
    summary="Replace a key with a new one",
)
def rotate(key_id: KeyId, principal: AnyMember, session: DbSession) -> IssuedKey:
    """A new key for the same user; the old one is revoked in the same transaction. 409
    for a revoked key."""
    old = _get_key(session, principal, key_id)
    try:
        new, plaintext = rotate_key(session, old)
    except KeyRevokedError:
        raise Conflict("the key is revoked; issue a new one", reason="key_revoked") from None
    audit(session, principal, "key.rotated", f"key:{old.prefix}", new_key=new.prefix)
    session.commit()
    session.refresh(new)
    return IssuedKey(key=KeyOut.model_validate(new, from_attributes=True), api_key=plaintext)


@router.delete("/{key_id}", status_code=204, responses=NOT_FOUND, summary="Revoke a key")
def revoke(key_id: KeyId, principal: AnyMember, session: DbSession) -> Response:
    """Idempotent: revoking a revoked key changes nothing."""
    api_key = _get_key(session, principal, key_id)
    if api_key.revoked_at is None:
        revoke_key(session, api_key)
        audit(session, principal, "key.revoked", f"key:{api_key.prefix}", user_id=api_key.user_id)
        session.commit()
    return Response(status_code=204)


def _get_key(session: Session, principal: Principal, key_id: int) -> ApiKey:
    # a non-admin's query sees only its own keys, so another user's key is "not found"
    query = select(ApiKey).where(
        ApiKey.id == key_id, ApiKey.organisation_id == principal.organisation_id
    )
    if not principal.is_admin:
        query = query.where(ApiKey.user_id == principal.user_id)
    api_key = session.exec(query).first()
    if api_key is None:
        raise NotFound(f"key {key_id} not found")
    return api_key
