"""``/v1/audit-log``: who changed money, keys, users and agents (admins only)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlmodel import col, select

from billing.api.deps import Admin, DbSession, Limit, Offset
from billing.api.errors import COMMON_RESPONSES
from storage.models import AuditLog

router = APIRouter(prefix="/v1/audit-log", tags=["audit"], responses=COMMON_RESPONSES)


class AuditEntryOut(BaseModel):
    id: int
    actor: str
    action: str
    subject: str
    detail: dict[str, Any]
    created_at: datetime


@router.get("", response_model=list[AuditEntryOut], summary="Audit log, newest first")
def list_audit_log(
    principal: Admin,
    session: DbSession,
    action: Annotated[str | None, Query(max_length=100)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[AuditEntryOut]:
    query = select(AuditLog).where(AuditLog.organisation_id == principal.organisation_id)
    if action is not None:
        query = query.where(AuditLog.action == action)
    rows = session.exec(query.order_by(col(AuditLog.id).desc()).offset(offset).limit(limit)).all()
    return [
        AuditEntryOut(
            id=row.id or 0,
            actor=row.actor,
            action=row.action,
            subject=row.subject,
            detail=json.loads(row.detail or "{}"),
            created_at=row.created_at,
        )
        for row in rows
    ]
