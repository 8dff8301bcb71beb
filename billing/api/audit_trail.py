"""Audit rows for changes made through the API, attributed to the calling key."""

from __future__ import annotations

from sqlmodel import Session

from billing.api.deps import Principal
from billing.audit import record_audit


def audit(
    session: Session, principal: Principal, action: str, subject: str, **detail: object
) -> None:
    """Add an audit row by ``principal`` to ``session`` (committed with the change it
    describes). ``detail`` must hold no secret and no full phone number."""
    record_audit(
        session,
        organisation_id=principal.organisation_id,
        actor=principal.actor,
        action=action,
        subject=subject,
        detail=detail,
    )
