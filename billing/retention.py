"""How long recordings live, and erasing a call's personal data on request.

``purge_expired_recordings``: each organisation's recordings older than its
``recording_retention_days`` are deleted (the file, then the row, and what was worked out
from it: diarization jobs and their turns), one audit entry per
organisation per sweep. The sidecar sweeps every hour while it serves, and
``python agent.py sidecar purge-expired`` sweeps once.

``erase_call``: everything personal a call left is removed (its recordings, files and
rows, their diarizations, and the caller's masked number on its row); what it cost
stays, because the ledger is the organisation's billing history, and holds no one's voice
or number.

A file is deleted before its row: if that fails the row stays and the next sweep (or a
retried erasure) tries again, so a row never says "gone" while the audio is on disk.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import CursorResult, Engine, delete
from sqlmodel import Session, SQLModel, col, select

from billing.audit import record_audit
from storage.db import session_scope
from storage.models import (
    Agent,
    ApiKey,
    AuditLog,
    BillingEvent,
    Call,
    DiarizationJob,
    Notification,
    Organisation,
    Payment,
    Recording,
    UsageRecord,
    User,
    Voiceprint,
    utcnow,
)

logger = logging.getLogger(__name__)

SYSTEM_ACTOR = "system:retention"


@dataclass(frozen=True)
class ErasureReport:
    call_id: str
    recordings_deleted: int
    files_deleted: int
    caller_number_removed: bool


def _delete_files(recordings_dir: Path, recordings: list[Recording]) -> int:
    """Unlink each recording's file (inside ``recordings_dir`` only); how many were there.
    Raises OSError when one cannot be removed."""
    root = recordings_dir.resolve()
    removed = 0
    for recording in recordings:
        path = (root / recording.path).resolve()
        if not path.is_relative_to(root):
            logger.error("recording path outside recordings_dir", extra={"id": recording.id})
            continue
        if path.exists():
            path.unlink()
            removed += 1
    return removed


def _delete_jobs(session: Session, recordings: list[Recording]) -> int:
    """The diarization jobs (and their results: who spoke when) of ``recordings``."""
    ids = [r.id for r in recordings]
    result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
        delete(DiarizationJob).where(col(DiarizationJob.recording_id).in_(ids))
    )
    return int(result.rowcount or 0)


def purge_expired_recordings(
    engine: Engine, recordings_dir: Path, *, now: datetime | None = None
) -> dict[int, int]:
    """One sweep; recordings deleted per organisation."""
    now = now or utcnow()
    deleted: dict[int, int] = {}
    with Session(engine) as session:
        policies = session.exec(
            select(Organisation.id, Organisation.recording_retention_days).where(
                col(Organisation.recording_retention_days).is_not(None)
            )
        ).all()
    for org_id, days in policies:
        assert org_id is not None and days is not None
        cutoff = now - timedelta(days=days)
        with session_scope(engine) as session:
            expired = list(
                session.exec(
                    select(Recording).where(
                        Recording.organisation_id == org_id,
                        col(Recording.deleted_at).is_(None),
                        col(Recording.created_at) < cutoff,
                    )
                ).all()
            )
            if not expired:
                continue
            _delete_files(recordings_dir, expired)
            _delete_jobs(session, expired)
            for recording in expired:
                recording.deleted_at = now
                session.add(recording)
            record_audit(
                session,
                organisation_id=org_id,
                actor=SYSTEM_ACTOR,
                action="recordings.expired",
                subject=f"organisation:{org_id}",
                detail={"count": len(expired), "retention_days": days},
            )
        deleted[org_id] = len(expired)
        logger.info(
            "expired recordings deleted",
            extra={"organisation_id": org_id, "count": len(expired), "retention_days": days},
        )
    return deleted


@dataclass(frozen=True)
class NumberErasureReport:
    calls_erased: int
    recordings_deleted: int
    files_deleted: int


def erase_caller_number(
    session: Session,
    recordings_dir: Path,
    organisation_id: int,
    number_hash: str,
    actor: str,
) -> NumberErasureReport:
    """Erase every call of the organisation from the number whose HMAC is
    ``number_hash``. The caller commits."""
    call_ids = session.exec(
        select(Call.id).where(
            Call.organisation_id == organisation_id, Call.caller_number_hash == number_hash
        )
    ).all()
    recordings = files = 0
    for call_id in call_ids:
        report = erase_call(session, recordings_dir, organisation_id, call_id, actor)
        assert report is not None
        recordings += report.recordings_deleted
        files += report.files_deleted
        call = session.get(Call, call_id)
        if call is not None:
            call.caller_number_hash = None  # found once: nothing left to find it by
            session.add(call)
    return NumberErasureReport(len(call_ids), recordings, files)


ORGANISATION_TABLES: tuple[type[SQLModel], ...] = (
    DiarizationJob,
    Voiceprint,
    Recording,
    UsageRecord,
    BillingEvent,
    Payment,
    Notification,
    AuditLog,
    Call,
    ApiKey,
    Agent,
    User,
)
"""An organisation's rows, in an order that deletes each before what it points to."""


def erase_organisation(
    engine: Engine, recordings_dir: Path, organisation_id: int
) -> dict[str, int]:
    """Everything the organisation has here: its recordings' files, then every row of it
    (calls, usage, billing and payment history, notifications, audit log, keys, agents,
    users, the organisation), in one transaction. Rows deleted per table; raises
    LookupError for an unknown organisation. Its plan stays (plans may be shared)."""
    removed: dict[str, int] = {}
    with session_scope(engine) as session:
        if session.get(Organisation, organisation_id) is None:
            raise LookupError(f"no organisation {organisation_id}")
        recordings = list(
            session.exec(select(Recording).where(Recording.organisation_id == organisation_id))
        )
        removed["recording files"] = _delete_files(recordings_dir, recordings)
        for table in ORGANISATION_TABLES:
            column = table.organisation_id  # type: ignore[attr-defined]
            result: CursorResult[Any] = session.execute(  # type: ignore[assignment]
                delete(table).where(column == organisation_id)
            )
            removed[str(table.__tablename__)] = int(result.rowcount or 0)
        result = session.execute(  # type: ignore[assignment]
            delete(Organisation).where(col(Organisation.id) == organisation_id)
        )
        removed["organisations"] = int(result.rowcount or 0)
    counts = {what.replace(" ", "_"): n for what, n in removed.items()}
    logger.warning("organisation erased", extra={"organisation_id": organisation_id, **counts})
    return removed


def erase_call(
    session: Session, recordings_dir: Path, organisation_id: int, call_id: str, actor: str
) -> ErasureReport | None:
    """Erase what the call left (see the module docstring); None when the organisation
    has no such call. The caller commits."""
    call = session.exec(
        select(Call).where(Call.id == call_id, Call.organisation_id == organisation_id)
    ).first()
    recordings = list(
        session.exec(
            select(Recording).where(
                Recording.organisation_id == organisation_id, Recording.call_id == call_id
            )
        ).all()
    )
    if call is None and not recordings:
        return None
    files = _delete_files(recordings_dir, recordings)
    _delete_jobs(session, recordings)
    for recording in recordings:
        session.delete(recording)
    had_number = call is not None and call.caller_number_masked is not None
    if call is not None:
        call.caller_number_masked = None
        session.add(call)
    report = ErasureReport(call_id, len(recordings), files, had_number)
    record_audit(
        session,
        organisation_id=organisation_id,
        actor=actor,
        action="call.erased",
        subject=f"call:{call_id}",
        detail={"recordings_deleted": len(recordings), "files_deleted": files},
    )
    return report
