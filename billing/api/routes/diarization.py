"""Offline diarization through the API, shaped like pyannote.ai's: submit a recording
(``POST /v1/recordings/{id}/diarize``), follow the job (``GET /v1/jobs/{id}``: status,
progress, failure reason), fetch its turns in any export format, cancel it; and
voiceprints (``/v1/voiceprints``, admins only: they are biometric data) that name the
people they match in a diarization asked to ``identify``. The work itself runs in
storage.diarization_jobs."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime
from typing import Annotated, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from billing.api.audit_trail import audit
from billing.api.deps import Admin, AgentEditor, DbSession, Principal, Resources
from billing.api.errors import (
    COMMON_RESPONSES,
    NOT_FOUND,
    Conflict,
    ErrorBody,
    NotFound,
    ServiceUnavailable,
    TooManyRequests,
    ValidationErrorBody,
)
from billing.api.routes.recordings import (
    RecordingId,
    get_recording,
    keyring_of,
    receive_body,
    refused_audio,
)
from storage.diarization import ENROL_MAX_S
from storage.diarization_jobs import OPEN_JOBS_PER_ORGANISATION, open_jobs, turns_of
from storage.models import DiarizationJob, JobStatus, RowId, Voiceprint
from storage.speakers import MEDIA_TYPES, export
from storage.uploads import UploadRefused, read_mono
from storage.voice_encoder import SAMPLE_RATE_HZ, EncoderUnavailable, VoiceEncoder, to_bytes

logger = logging.getLogger(__name__)

router = APIRouter(tags=["diarization"], responses=COMMON_RESPONSES)

VOICEPRINT_MAX_BYTES = 32 * 1024**2
"""Two minutes of 48 kHz 16-bit stereo WAV is 23 MB."""


class DiarizeRequest(BaseModel):
    speakers: int | None = Field(default=None, ge=1, le=20)
    """How many people speak, when known; leave it out to have them counted."""
    identify: bool = False
    """Name speakers whose voice matches one of the organisation's voiceprints."""
    transcribe: bool = False
    """Also transcribe it (English), each word given to the speaker talking at it."""


class JobOut(BaseModel):
    id: int
    recording_id: int
    status: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: float
    speakers: int | None
    identify: bool
    transcribe: bool
    attempts: int
    backend: str | None
    error_reason: str | None
    """``too_short``, ``unsupported``, ``model_missing``, ``model_incomplete``,
    ``timeout`` or ``failed``."""
    error: str | None
    created_at: datetime
    finished_at: datetime | None


@router.post(
    "/v1/recordings/{recording_id}/diarize",
    response_model=JobOut,
    status_code=202,
    responses={
        **NOT_FOUND,
        422: {"model": ValidationErrorBody, "description": "a bad speaker count"},
        429: {"model": ErrorBody, "description": "too many open jobs, or rate limited"},
        503: {"model": ErrorBody, "description": "no recording keys on this sidecar"},
    },
    summary="Diarize a recording (a job)",
)
def submit_diarization(
    recording_id: RecordingId,
    principal: AgentEditor,
    session: DbSession,
    resources: Resources,
    body: DiarizeRequest | None = None,
) -> DiarizationJob:
    """Queues the job and answers at once; follow it at ``GET /v1/jobs/{id}``. An
    organisation has at most three jobs queued or running at a time."""
    request = body or DiarizeRequest()
    recording = get_recording(session, principal, recording_id)
    queue = resources.jobs
    if queue is None:
        keyring_of(resources.config)  # 503: no recording keys
        raise ServiceUnavailable("diarization is not available", reason="no_job_queue")
    if open_jobs(session, principal.organisation_id) >= OPEN_JOBS_PER_ORGANISATION:
        raise TooManyRequests(
            f"{OPEN_JOBS_PER_ORGANISATION} diarization jobs are already queued or running; "
            "wait for one to finish",
            reason="too_many_jobs",
            headers={"Retry-After": "30"},
        )
    job = DiarizationJob(
        organisation_id=principal.organisation_id,
        recording_id=recording_id,
        speakers=request.speakers,
        identify=request.identify,
        transcribe=request.transcribe,
    )
    session.add(job)
    audit(session, principal, "diarization.submitted", f"recording:{recording_id}")
    session.commit()
    session.refresh(job)
    assert job.id is not None
    queue.submit(job.id, duration_s=recording.duration_s)
    logger.info(
        "diarization queued",
        extra={"job_id": job.id, "recording_id": recording_id, "actor": principal.actor},
    )
    return job


def _get_job(session: Session, principal: Principal, job_id: int) -> DiarizationJob:
    job = session.get(DiarizationJob, job_id)
    if job is None or job.organisation_id != principal.organisation_id:
        raise NotFound(f"job {job_id} not found")
    get_recording(session, principal, job.recording_id)  # 404 unless its recording is visible
    return job


@router.get(
    "/v1/jobs/{job_id}", response_model=JobOut, responses=NOT_FOUND, summary="A job's state"
)
def get_job(job_id: RowId, principal: AgentEditor, session: DbSession) -> DiarizationJob:
    return _get_job(session, principal, job_id)


@router.get(
    "/v1/jobs/{job_id}/result",
    responses={
        **NOT_FOUND,
        **{
            409: {
                "model": ErrorBody,
                "description": "the job has not finished, or made no transcript",
            }
        },
        200: {"content": {t: {} for t in sorted(set(MEDIA_TYPES.values()))}},
    },
    summary="A finished job's turns or transcript: RTTM, JSON, SRT, VTT, TXT, CSV or TSV",
)
def job_result(
    job_id: RowId,
    principal: AgentEditor,
    session: DbSession,
    format: Annotated[Literal["rttm", "json", "srt", "vtt", "txt", "csv", "tsv"], Query()] = "json",
    transcript: Annotated[bool, Query()] = False,
) -> Response:
    """``transcript=true``: the speaker-attributed transcript (one line per stretch of one
    speaker, with its words) of a job submitted with ``transcribe``."""
    job = _get_job(session, principal, job_id)
    if job.status != JobStatus.done or job.result is None:
        raise Conflict(f"job {job_id} is {job.status}", reason="job_not_done")
    lines = turns_of(job.result, transcript=transcript)
    if lines is None:
        raise Conflict(f"job {job_id} was not asked to transcribe", reason="no_transcript")
    body = export(lines, format, name=f"recording-{job.recording_id}")
    return Response(body, media_type=MEDIA_TYPES[format])


@router.delete(
    "/v1/jobs/{job_id}",
    response_model=JobOut,
    responses={**NOT_FOUND, 409: {"model": ErrorBody, "description": "already finished"}},
    summary="Cancel a queued or running job",
)
def cancel_job(job_id: RowId, principal: AgentEditor, session: DbSession) -> DiarizationJob:
    """A queued job never starts; a running one stops at its next progress step."""
    job = _get_job(session, principal, job_id)
    if job.status not in (JobStatus.queued, JobStatus.running):
        raise Conflict(f"job {job_id} is {job.status}", reason="job_finished")
    job.status = JobStatus.cancelled
    session.add(job)
    session.commit()
    session.refresh(job)
    return job


class VoiceprintOut(BaseModel):
    id: int
    name: str
    created_at: datetime


@router.post(
    "/v1/voiceprints",
    response_model=VoiceprintOut,
    status_code=201,
    responses={
        409: {"model": ErrorBody, "description": "a voiceprint with this name exists"},
        413: {"model": ErrorBody, "description": "larger than the sidecar keeps"},
        415: {"model": ErrorBody, "description": "not WAV, FLAC, Ogg, MP3 or AIFF"},
        422: {
            "model": ErrorBody | ValidationErrorBody,
            "description": "damaged, too short or too long audio, or a bad name",
        },
        503: {"model": ErrorBody, "description": "the speaker encoder is not installed"},
    },
    summary="Enrol a person's voice from a clip of them speaking",
)
async def enrol_voiceprint(
    request: Request,
    principal: Admin,
    resources: Resources,
    name: Annotated[str, Query(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")],
) -> VoiceprintOut:
    """The body is the clip itself (0.5 s to 2 minutes, one person). Only the embedding
    is kept, never the audio; ``DELETE`` erases it."""
    incoming = resources.config.recordings_dir / ".incoming" / f"voice-{uuid.uuid4().hex}"
    try:
        await receive_body(request, incoming)
        try:
            audio = await anyio.to_thread.run_sync(
                lambda: read_mono(incoming, SAMPLE_RATE_HZ, max_seconds=ENROL_MAX_S)
            )
            embedding = await anyio.to_thread.run_sync(
                lambda: VoiceEncoder().embed_utterance(audio)
            )
        except UploadRefused as exc:
            raise refused_audio(exc) from None
        except EncoderUnavailable as exc:
            raise ServiceUnavailable(str(exc), reason="encoder_missing") from None
    finally:
        incoming.unlink(missing_ok=True)
    with Session(resources.engine) as session:
        taken = session.exec(
            select(Voiceprint.id).where(
                Voiceprint.organisation_id == principal.organisation_id, Voiceprint.name == name
            )
        ).first()
        if taken is not None:
            raise Conflict(f"a voiceprint named {name!r} exists", reason="duplicate_name")
        row = Voiceprint(
            organisation_id=principal.organisation_id, name=name, embedding=to_bytes(embedding)
        )
        session.add(row)
        audit(session, principal, "voiceprint.enrolled", f"voiceprint:{name}")
        session.commit()
        session.refresh(row)
        return VoiceprintOut.model_validate(row, from_attributes=True)


@router.get("/v1/voiceprints", response_model=list[VoiceprintOut], summary="The enrolled voices")
def list_voiceprints(principal: Admin, session: DbSession) -> list[Voiceprint]:
    return list(
        session.exec(
            select(Voiceprint)
            .where(Voiceprint.organisation_id == principal.organisation_id)
            .order_by(col(Voiceprint.id))
        ).all()
    )


@router.delete(
    "/v1/voiceprints/{voiceprint_id}",
    status_code=204,
    responses=NOT_FOUND,
    summary="Erase a voiceprint",
)
def delete_voiceprint(voiceprint_id: RowId, principal: Admin, session: DbSession) -> Response:
    row = session.get(Voiceprint, voiceprint_id)
    if row is None or row.organisation_id != principal.organisation_id:
        raise NotFound(f"voiceprint {voiceprint_id} not found")
    session.delete(row)
    audit(session, principal, "voiceprint.erased", f"voiceprint:{row.name}")
    session.commit()
    return Response(status_code=204)
