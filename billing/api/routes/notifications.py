"""``/v1/notifications``: what the organisation's admins were told (quota reached, ...)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlmodel import col, select

from billing.api.deps import BillingReader, DbSession, Limit, Offset
from billing.api.errors import COMMON_RESPONSES
from storage.models import Notification

router = APIRouter(prefix="/v1/notifications", tags=["notifications"], responses=COMMON_RESPONSES)


class NotificationOut(BaseModel):
    id: int
    kind: str
    message: str
    created_at: datetime
    delivered_at: datetime | None
    delivery_attempts: int


@router.get("", response_model=list[NotificationOut], summary="Notifications, newest first")
def list_notifications(
    principal: BillingReader,
    session: DbSession,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[Notification]:
    query = (
        select(Notification)
        .where(Notification.organisation_id == principal.organisation_id)
        .order_by(col(Notification.id).desc())
        .offset(offset)
        .limit(limit)
    )
    return list(session.exec(query).all())
