"""``/v1/recordings``: call recordings. Admins reach all of the organisation's; agent users
those of their own agents' calls; viewers none (recordings are callers' voices, not
reporting data)."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse
from pydantic import BaseModel
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from billing.api.audit_trail import audit
from billing.api.deps import (
    Admin,
    AgentEditor,
    DbSession,
    Limit,
    Offset,
    Principal,
    Resources,
    ServiceCaller,
)
from billing.api.errors import (
    COMMON_RESPONSES,
    NOT_FOUND,
    ErrorBody,
    NotFound,
    ServiceUnavailable,
    Unprocessable,
    UnsupportedMediaType,
    ValidationErrorBody,
)
from billing.api.resources import SidecarResources
from billing.config import SidecarConfig
from billing.internal_api import RECORDINGS_UPLOAD_PATH
from storage.diarization_jobs import UPLOAD_PREFIX
from storage.models import Agent, Call, DiarizationJob, Recording, Role, RowId, utcnow
from storage.recording_files import (
    Keyring,
    RecordingError,
    RecordingInfo,
    open_recording,
    pcm_length,
    wav_header,
)
from storage.speakers import MEDIA_TYPES, channel_turns, export
from storage.uploads import UploadRefused, seal_upload

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/recordings", tags=["recordings"], responses=COMMON_RESPONSES)

RecordingId = RowId


class RecordingOut(BaseModel):
    id: int
    call_id: str
    size_bytes: int
    sha256: str
    duration_s: float | None
    channels: int | None
    """2 for a call recorded by the worker: the caller left, the agent right."""
    created_at: datetime


internal_router = APIRouter(
    prefix=RECORDINGS_UPLOAD_PATH.rstrip("/"),
    tags=["internal"],
    dependencies=[ServiceCaller],
    responses={401: {"model": ErrorBody}},
)
CallIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class RecordingStored(BaseModel):
    id: int
    duration_s: float


@internal_router.put(
    "/{organisation_id}/{call_id}",
    response_model=RecordingStored,
    status_code=201,
    responses={
        413: {"model": ErrorBody, "description": "larger than the sidecar keeps"},
        422: {
            "model": ErrorBody | ValidationErrorBody,
            "description": "not a whole recording sealed with a known key (ErrorBody), or "
            "a malformed organisation or call id (ValidationErrorBody)",
        },
        503: {"model": ErrorBody, "description": "no recording keys on this sidecar"},
    },
    summary="Store a call's sealed recording (a worker)",
)
async def store_recording(
    organisation_id: RowId, call_id: CallIdPath, request: Request, resources: Resources
) -> RecordingStored:
    """The body is the ``.varec`` file the worker wrote, streamed to disk, then opened
    whole with the sidecar's keys (a file cut short or changed is refused, and nothing is
    kept). Storing the same call again replaces it."""
    keyring = keyring_of(resources.config)
    root = resources.config.recordings_dir
    incoming = root / ".incoming" / f"{organisation_id}-{call_id}-{uuid.uuid4().hex[:8]}"
    try:
        digest = await receive_body(request, incoming)
        info, pcm_bytes = await anyio.to_thread.run_sync(_check_sealed, incoming, keyring)
        final = root / str(organisation_id) / f"{call_id}.varec"
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(incoming, final)
    finally:
        incoming.unlink(missing_ok=True)
    duration_s = round(pcm_bytes / (info.sample_rate * info.channels * 2), 3)
    fields: dict[str, Any] = {
        "path": str(final.relative_to(root)),
        "size_bytes": final.stat().st_size,
        "sha256": digest,
        "key_id": info.key_id,
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "duration_s": duration_s,
    }
    recording_id = await anyio.to_thread.run_sync(
        _upsert_recording, resources, organisation_id, call_id, fields
    )
    logger.info(
        "recording stored",
        extra={
            "recording_id": recording_id,
            "call_id": call_id,
            "duration_s": duration_s,
        },
    )
    return RecordingStored(id=recording_id, duration_s=duration_s)


def keyring_of(config: SidecarConfig) -> Keyring:
    """The keys recordings are sealed with; 503 when this sidecar has none."""
    if config.recording_keyring is None:
        raise ServiceUnavailable("this sidecar has no RECORDING_KEYS", reason="no_recording_keys")
    return config.recording_keyring


def refused_audio(exc: UploadRefused) -> UnsupportedMediaType | Unprocessable:
    """The API's answer to audio it cannot take: 415 for a format it does not read, 422
    for audio it cannot use."""
    if exc.status == 415:
        return UnsupportedMediaType(exc.message, reason="unsupported_format")
    return Unprocessable(exc.message, reason="unusable_audio")


async def receive_body(request: Request, path: FilePath) -> str:
    """Stream the request's body to ``path`` (its size bounded by the body-limit
    middleware); the body's sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    async with await anyio.open_file(path, "wb") as f:
        async for piece in request.stream():
            digest.update(piece)
            await f.write(piece)
    return digest.hexdigest()


def _check_sealed(path: FilePath, keyring: Keyring) -> tuple[RecordingInfo, int]:
    try:
        info, chunks = open_recording(path, keyring)
        return info, sum(len(chunk) for chunk in chunks)
    except RecordingError as exc:
        raise Unprocessable(f"recording refused: {exc}", reason="recording_refused") from None


def _upsert_recording(
    resources: SidecarResources, organisation_id: int, call_id: str, fields: dict[str, Any]
) -> int:
    with Session(resources.engine) as session:
        recording = session.exec(
            select(Recording).where(
                Recording.organisation_id == organisation_id,
                Recording.call_id == call_id,
                col(Recording.deleted_at).is_(None),
            )
        ).first() or Recording(organisation_id=organisation_id, call_id=call_id, **fields)
        for name, value in fields.items():
            setattr(recording, name, value)
        session.add(recording)
        session.commit()
        assert recording.id is not None
        return recording.id


@router.post(
    "",
    response_model=RecordingOut,
    status_code=201,
    responses={
        413: {"model": ErrorBody, "description": "larger than the sidecar keeps"},
        415: {"model": ErrorBody, "description": "not WAV, FLAC, Ogg, MP3 or AIFF"},
        422: {"model": ErrorBody, "description": "damaged, too short or too many channels"},
        503: {"model": ErrorBody, "description": "no recording keys on this sidecar"},
    },
    summary="Upload audio of your own (for diarization)",
)
async def upload_recording(
    request: Request, principal: Admin, resources: Resources
) -> RecordingOut:
    """Admins only (an upload belongs to no agent's call, so agent users would not see
    it). The body is the audio file itself (any ``Content-Type``), streamed to disk up to the
    sidecar's limit; its format is read from its content (WAV, FLAC, Ogg, MP3, AIFF, any
    rate, up to 8 channels), and it is kept sealed like a call recording, as
    ``upload-<id>``."""
    keyring = keyring_of(resources.config)
    root = resources.config.recordings_dir
    name = f"{UPLOAD_PREFIX}{uuid.uuid4().hex[:16]}"
    incoming = root / ".incoming" / name
    final = root / str(principal.organisation_id) / f"{name}.varec"
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        await receive_body(request, incoming)
        try:
            sealed = await anyio.to_thread.run_sync(seal_upload, incoming, final, keyring)
        except UploadRefused as exc:
            raise refused_audio(exc) from None
    finally:
        incoming.unlink(missing_ok=True)
    fields: dict[str, Any] = {
        "path": str(final.relative_to(root)),
        "size_bytes": final.stat().st_size,
        "sha256": await anyio.to_thread.run_sync(_file_sha256, final),
        "key_id": keyring.current,
        "sample_rate": sealed.sample_rate,
        "channels": sealed.channels,
        "duration_s": sealed.duration_s,
    }
    recording_id = await anyio.to_thread.run_sync(
        _upsert_recording, resources, principal.organisation_id, name, fields
    )
    logger.info(
        "recording uploaded",
        extra={"recording_id": recording_id, "format": sealed.kind, "actor": principal.actor},
    )
    with Session(resources.engine) as session:
        stored = session.get(Recording, recording_id)
        assert stored is not None
        return RecordingOut.model_validate(stored, from_attributes=True)


def _file_sha256(path: FilePath) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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
) -> Response:
    """A sealed call recording as a WAV file (decrypted as it streams; a file that fails
    to open is a 500 and an error in the log, never audio that is not what was
    recorded); a file stored as it came, as it is."""
    recording = get_recording(session, principal, recording_id)
    path = _file_path(resources.config, recording)
    if not path.is_file():
        logger.error("recording file missing", extra={"recording_id": recording.id})
        raise NotFound(f"recording {recording_id} has no file")
    logger.info(
        "recording downloaded", extra={"recording_id": recording.id, "actor": principal.actor}
    )
    if recording.key_id is not None:
        return _decrypted_wav(resources.config, path, recording)
    return FileResponse(
        path,
        media_type="application/octet-stream",
        filename=f"recording-{recording.id}{path.suffix}",
    )


@router.get(
    "/{recording_id}/speakers",
    responses={
        **NOT_FOUND,
        200: {"content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}},
        422: {
            "model": ErrorBody | ValidationErrorBody,
            "description": "not a two-channel call recording (ErrorBody), or a bad format",
        },
    },
    summary="Who spoke when in a call recording: RTTM, JSON, SRT, VTT, TXT, CSV or TSV",
)
def recording_speakers(
    recording_id: RecordingId,
    principal: AgentEditor,
    session: DbSession,
    resources: Resources,
    format: Annotated[Literal["rttm", "json", "srt", "vtt", "txt", "csv", "tsv"], Query()] = "json",
) -> Response:
    """A call the worker recorded has the caller on one channel and the agent on the
    other: its turns come from the channels (storage.speakers), at once. Other audio is
    diarized by a job: ``POST /v1/recordings/{id}/diarize``."""
    recording = get_recording(session, principal, recording_id)
    if recording.channels != 2 or recording.key_id is None or recording.sample_rate is None:
        raise Unprocessable(
            "speaker turns come from a two-channel call recording (caller and agent); "
            "diarize other audio with POST /v1/recordings/{id}/diarize",
            reason="not_a_call_recording",
        )
    keyring = keyring_of(resources.config)
    path = _file_path(resources.config, recording)
    try:
        _, chunks = open_recording(path, keyring)
        turns = channel_turns(chunks, recording.sample_rate)
    except (RecordingError, OSError) as exc:
        logger.error(
            "recording does not open", extra={"recording_id": recording.id, "error": str(exc)}
        )
        raise ServiceUnavailable(
            "the recording cannot be opened", reason="recording_unreadable"
        ) from None
    body = export(turns, format, name=f"recording-{recording.id}")
    return Response(body, media_type=MEDIA_TYPES[format])


@router.delete(
    "/{recording_id}", status_code=204, responses=NOT_FOUND, summary="Delete a recording"
)
def delete_recording(
    recording_id: RecordingId, principal: AgentEditor, session: DbSession, resources: Resources
) -> Response:
    """Removes the file and marks the recording deleted. The deletion is reported only
    once the file is gone: if removing it fails, nothing is marked and the error is a
    500, so the caller retries."""
    recording = get_recording(session, principal, recording_id)
    path = _file_path(resources.config, recording)
    recording.deleted_at = utcnow()
    session.add(recording)
    for job in session.exec(
        select(DiarizationJob).where(DiarizationJob.recording_id == recording.id)
    ).all():
        session.delete(job)  # who spoke when in it goes with it
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


def _decrypted_wav(config: SidecarConfig, path: FilePath, recording: Recording) -> Response:
    keyring = keyring_of(config)
    try:
        info, chunks = open_recording(path, keyring)
        pcm_bytes = pcm_length(path)
    except RecordingError as exc:
        logger.error(
            "recording does not open", extra={"recording_id": recording.id, "error": str(exc)}
        )
        raise ServiceUnavailable(
            "the recording cannot be opened", reason="recording_unreadable"
        ) from None

    def body() -> Iterator[bytes]:
        yield wav_header(pcm_bytes, info.sample_rate, info.channels)
        try:
            yield from chunks
        except RecordingError as exc:  # found mid-file: the client sees a cut download
            logger.error(
                "recording failed mid-download",
                extra={"recording_id": recording.id, "error": str(exc)},
            )
            raise

    return StreamingResponse(
        body(),
        media_type="audio/wav",
        headers={
            "Content-Disposition": f'attachment; filename="recording-{recording.id}.wav"',
            "Content-Length": str(44 + pcm_bytes),
        },
    )


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


def get_recording(session: Session, principal: Principal, recording_id: int) -> Recording:
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
