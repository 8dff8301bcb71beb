"""``/v1/recordings``: call recordings. Admins reach all of the organisation's; agent users
those of their own agents' calls; viewers none (recordings are callers' voices, not
reporting data)."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Query, Response
from fastapi.responses import FileResponse
from pydantic import BaseModel
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from billing.api.audit_trail import audit
from billing.api.deps import AgentEditor, DbSession, Limit, Offset, Principal, Resources
from billing.api.errors import COMMON_RESPONSES, NOT_FOUND, NotFound
from billing.config import SidecarConfig
from storage.models import Agent, Call, Recording, Role, RowId, utcnow

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/recordings", tags=["recordings"], responses=COMMON_RESPONSES)

RecordingId = RowId


class RecordingOut(BaseModel):
    id: int
    call_id: str
    size_bytes: int
    sha256: str
    created_at: datetime


@router.get("", response_model=list[RecordingOut], summary="List recordings, newest first")
def list_recordings(
    principal: AgentEditor,
    session: DbSession,
    call_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> list[Recording]:
    query = _visible_recordings(principal)
    if call_id is not None:
        query = query.where(Recording.call_id == call_id)
    query = query.order_by(col(Recording.id).desc()).offset(offset).limit(limit)
    return list(session.exec(query).all())


@router.get(
    "/{recording_id}/download",
    response_class=FileResponse,
    responses={**NOT_FOUND, 200: {"content": {"application/octet-stream": {}}}},
    summary="Download a recording's file",
)
def download_recording(
    recording_id: RecordingId, principal: AgentEditor, session: DbSession, resources: Resources
) -> FileResponse:
    """The stored file as it is, streamed."""
    recording = _get_recording(session, principal, recording_id)
    path = _file_path(resources.config, recording)
    if not path.is_file():
        logger.error("recording file missing", extra={"recording_id": recording.id})
        raise NotFound(f"recording {recording_id} has no file")
    logger.info(
        "recording downloaded", extra={"recording_id": recording.id, "actor": principal.actor}
    )
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"recording-{recording.id}{path.suffix}",
    )


@router.delete(
    "/{recording_id}", status_code=204, responses=NOT_FOUND, summary="Delete a recording"
)
def delete_recording(
    recording_id: RecordingId, principal: AgentEditor, session: DbSession, resources: Resources
) -> Response:
    """Removes the file and marks the recording deleted. The deletion is reported only
    once the file is gone: if removing it fails, nothing is marked and the error is a
    500, so the caller retries."""
    recording = _get_recording(session, principal, recording_id)
    path = _file_path(resources.config, recording)
    recording.deleted_at = utcnow()
    session.add(recording)
    audit(
        session,
        principal,
        "recording.deleted",
        f"recording:{recording.id}",
        call_id=recording.call_id,
    )
    session.flush()
    # the file goes after the row is written but before the commit: a failed commit leaves
    # a row pointing at no file (deleting again succeeds), never a "deleted" recording
    # whose audio is still on disk
    path.unlink(missing_ok=True)
    session.commit()
    return Response(status_code=204)


def _visible_recordings(principal: Principal) -> SelectOfScalar[Recording]:
    query = select(Recording).where(
        Recording.organisation_id == principal.organisation_id,
        col(Recording.deleted_at).is_(None),
    )
    if principal.role == Role.agent:
        query = (
            query.join(Call, col(Call.id) == Recording.call_id)
            .join(Agent, col(Agent.id) == Call.agent_id)
            .where(Call.organisation_id == principal.organisation_id)
            .where(Agent.owner_user_id == principal.user_id)
        )
    return query


def _get_recording(session: Session, principal: Principal, recording_id: int) -> Recording:
    recording = session.exec(
        _visible_recordings(principal).where(Recording.id == recording_id)
    ).first()
    if recording is None:
        raise NotFound(f"recording {recording_id} not found")
    return recording


def _file_path(config: SidecarConfig, recording: Recording) -> FilePath:
    """The recording's file, which must lie inside ``recordings_dir`` (``path`` is relative
    to it, or absolute within it); anything else is refused as not found and logged."""
    root = config.recordings_dir.resolve()
    path = (root / recording.path).resolve()
    if not path.is_relative_to(root):
        logger.error("recording path outside recordings_dir", extra={"recording_id": recording.id})
        raise NotFound(f"recording {recording.id} has no file")
    return path
