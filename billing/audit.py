"""The audit log: who changed money, keys, users, agents, plans or recordings, and how.

Rows are added to the caller's transaction, so an audited change and its audit row are
committed (or rolled back) together.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sqlmodel import Session

from storage.models import AuditLog, utcnow

SYSTEM_ACTOR = "system"


def record_audit(
    session: Session,
    *,
    organisation_id: int,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any] | None = None,
) -> AuditLog:
    """Add an audit row (``action`` like ``"key.revoked"``, ``subject`` like
    ``"key:ab12cd34ef56"``) to ``session``; the caller commits. ``detail`` must be JSON
    serialisable and must never hold a secret or a full phone number."""
    row = AuditLog(
        **audit_values(
            organisation_id=organisation_id,
            actor=actor,
            action=action,
            subject=subject,
            detail=detail,
        )
    )
    session.add(row)
    return row


def audit_values(
    *,
    organisation_id: int,
    actor: str,
    action: str,
    subject: str,
    detail: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """An audit row's column values, for a bulk ``INSERT`` of many rows at once (the
    ledger's batches); :func:`record_audit` adds one row."""
    return {
        "organisation_id": organisation_id,
        "actor": actor,
        "action": action,
        "subject": subject,
        "detail": json.dumps(dict(detail or {}), sort_keys=True, default=str),
        "created_at": utcnow(),
    }
