"""Diarization jobs: a recording's "who spoke when", worked out off the request path.

    POST /v1/recordings/{id}/diarize -> a ``diarization_jobs`` row (queued)
      -> a queue: :class:`ThreadJobQueue` in the sidecar's process, or RQ on Redis
         (:class:`RqJobQueue`; ``python agent.py diarize-worker`` processes run them)
      -> :func:`run_job`: open the sealed recording, mix to 16 kHz mono, diarize
         (storage.diarization), name enrolled voices, transcribe if asked (each word to
         its speaker: storage.transcripts), store the result on the row

The row is the job's state for everyone: ``progress`` is written as the work goes (at most
every :data:`PROGRESS_EVERY_S`), and the worker reads ``status`` back at each step, so a
cancellation (``DELETE /v1/jobs/{id}``) stops it at the next one. A job past its deadline
(:func:`timeout_for`, scaled to the audio's length) fails with reason ``timeout``.
Failures a retry cannot fix (too short, no model) fail at once with their reason; anything
else is retried up to :data:`MAX_ATTEMPTS` times with backoff (:data:`RETRY_BACKOFF_S`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import redis
import soxr
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from storage.diarization import (
    BLOCK_S,
    Audio,
    DiarizationError,
    Diarizer,
    EmbeddingDiarizer,
    Progress,
    diarizer_for,
    identify,
    whole,
)
from storage.models import DiarizationJob, JobStatus, Recording, Voiceprint, utcnow
from storage.recording_files import Keyring, RecordingError, open_recording
from storage.speakers import CHANNEL_SPEAKERS, Turn, attribute_words, channel_turns, split_caller
from storage.transcripts import transcribe_words
from storage.voice_encoder import SAMPLE_RATE_HZ, from_bytes

log = logging.getLogger("storage.diarization_jobs")

MAX_ATTEMPTS = 3
RETRY_BACKOFF_S = (5.0, 30.0)
"""Waits before the second and third attempts."""
PROGRESS_EVERY_S = 0.5
UPLOAD_PREFIX = "upload-"
"""The ``call_id`` of a recording an organisation uploaded (``POST /v1/recordings``);
any other two-channel recording is a call the worker recorded, caller left, agent right,
whose speakers come from its channels."""
OPEN_JOBS_PER_ORGANISATION = 3
"""Queued or running jobs one organisation may have; more are refused (429)."""


def timeout_for(duration_s: float | None) -> float:
    """How long a job may run: a minute plus four times the audio's length (the
    embedding diarizer runs at ~0.03 times real time here; pyannote's at ~3)."""
    return 60.0 + 4.0 * (duration_s or 3600.0)


class JobCancelled(Exception):
    pass


@dataclass(frozen=True)
class JobContext:
    """What running a job needs besides its row."""

    engine: Engine
    recordings_dir: Path
    keyring: Keyring
    model_dir: Path | None = None
    """``DIARIZATION_MODEL_DIR``: a pyannote pipeline; None: the embedding diarizer."""


_diarizers: dict[Path | None, Diarizer] = {}
_diarizers_lock = threading.Lock()


def _diarizer(model_dir: Path | None) -> Diarizer:
    """One diarizer per model per process (its weights load once)."""
    with _diarizers_lock:
        if model_dir not in _diarizers:
            _diarizers[model_dir] = diarizer_for(model_dir)
        return _diarizers[model_dir]


def recording_blocks(
    path: Path, keyring: Keyring, *, channel: int | None = None, block_s: float = BLOCK_S
) -> Iterator[np.ndarray]:
    """A sealed recording as 16 kHz mono float32 (``channel`` alone, else the channels
    averaged) in blocks of ``block_s``, decrypted and resampled chunk by chunk: only a
    block is in memory at a time. Raises RecordingError (or OSError) when it cannot be
    opened or read."""
    info, chunks = open_recording(path, keyring)
    return _blocks(chunks, info.sample_rate, info.channels, channel, int(block_s * SAMPLE_RATE_HZ))


def _blocks(
    chunks: Iterable[bytes], rate: int, channels: int, channel: int | None, block: int
) -> Iterator[np.ndarray]:
    resampler = soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1, dtype="float32")
    pieces: list[np.ndarray] = []
    held = 0
    leftover = b""
    for chunk in _with_end(chunks):
        if chunk is None:
            out = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        else:
            data = leftover + chunk
            usable = len(data) - len(data) % (2 * channels)
            leftover = data[usable:]
            pcm = np.frombuffer(data[:usable], dtype="<i2").reshape(-1, channels)
            picked = pcm.mean(axis=1) if channel is None else pcm[:, channel]
            out = resampler.resample_chunk(picked.astype(np.float32) / 32768.0)
        pieces.append(out)
        held += len(out)
        while held >= block or (chunk is None and held):
            audio = np.concatenate(pieces)
            yield audio[:block]
            pieces, held = [audio[block:]], len(audio) - min(block, len(audio))


def _with_end(chunks: Iterable[bytes]) -> Iterator[bytes | None]:
    yield from chunks
    yield None


def recording_audio(
    path: Path, keyring: Keyring, *, channel: int | None = None
) -> tuple[np.ndarray, float]:
    """The whole of :func:`recording_blocks` as one array, and its duration in seconds."""
    audio = whole(recording_blocks(path, keyring, channel=channel))
    return audio, len(audio) / SAMPLE_RATE_HZ


def result_json(turns: list[Turn], transcript: list[Turn] | None) -> str:
    """What a finished job keeps: its turns and, if asked for, the attributed transcript."""
    return json.dumps(
        {
            "turns": [asdict(t) | {"text": None} for t in turns],
            "transcript": [asdict(t) for t in transcript] if transcript is not None else None,
        }
    )


def turns_of(result: str, *, transcript: bool = False) -> list[Turn] | None:
    """The turns (or the transcript's lines; None when the job made none) of a result."""
    kept = json.loads(result)["transcript" if transcript else "turns"]
    if kept is None:
        return None
    return [Turn(t["start_s"], t["end_s"], t["speaker"], t["text"] or "") for t in kept]


class _Reporter:
    """The progress callback: writes progress, notices cancellation and the deadline."""

    def __init__(self, engine: Engine, job_id: int, deadline: float) -> None:
        self._engine, self._job_id, self._deadline = engine, job_id, deadline
        self._written_at = 0.0

    def __call__(self, share: float) -> None:
        now = time.monotonic()
        if now > self._deadline:
            raise DiarizationError("timeout", "the job ran past its deadline")
        if now - self._written_at < PROGRESS_EVERY_S and share < 1.0:
            return
        self._written_at = now
        with Session(self._engine) as session:
            job = session.get(DiarizationJob, self._job_id)
            if job is None or job.status == JobStatus.cancelled:
                raise JobCancelled()
            job.progress = round(min(max(share, 0.0), 1.0), 3)
            session.add(job)
            session.commit()


@dataclass
class _Scaled:
    """Progress of one part of a job, reported as its share of the whole."""

    report: Callable[[float], None]
    start: float
    end: float

    def __call__(self, share: float) -> None:
        self.report(self.start + (self.end - self.start) * share)


def run_job(context: JobContext, job_id: int) -> bool:
    """Run one attempt of job ``job_id``. True when the job is over (done, failed,
    cancelled, gone); False when it should be tried again (it is queued again)."""
    with Session(context.engine) as session:
        job = session.get(DiarizationJob, job_id)
        if job is None or job.status not in (JobStatus.queued, JobStatus.running):
            return True
        recording = session.get(Recording, job.recording_id)
        job.status = JobStatus.running
        job.attempts += 1
        job.started_at = job.started_at or utcnow()
        session.add(job)
        session.commit()
        attempt, speakers, named = job.attempts, job.speakers, job.identify
        transcribe = job.transcribe
        organisation_id = job.organisation_id
        duration_s = recording.duration_s if recording else None
        by_channel = (
            recording is not None
            and recording.channels == 2
            and not recording.call_id.startswith(UPLOAD_PREFIX)
        )
        path = (
            context.recordings_dir / recording.path
            if recording is not None and recording.deleted_at is None
            else None
        )
    extra = {"job_id": job_id, "attempt": attempt}
    started = time.monotonic()
    reporter = _Reporter(context.engine, job_id, started + timeout_for(duration_s))
    try:
        if path is None:
            raise DiarizationError("unsupported", "the recording was deleted")
        try:
            # read a block at a time (opened here, so a file that cannot be read fails at
            # once); a transcript reads it again, the same way
            audio: Audio = recording_blocks(path, context.keyring)
            channels = None
            if by_channel:  # our own call: who spoke when is in its channels, exactly
                info, chunks = open_recording(path, context.keyring)
                channels = channel_turns(chunks, info.sample_rate)
        except (RecordingError, OSError) as exc:
            raise DiarizationError(
                "unsupported", f"the recording cannot be opened: {exc}"
            ) from None
        reporter(0.02)
        # with a transcript, diarizing is the first 60 % of the work
        share = 0.6 if transcribe else 1.0
        step = _Scaled(reporter, 0.0, share)
        if channels is not None:
            turns, backend = channels, "channels"
            if speakers is not None and speakers > len(CHANNEL_SPEAKERS):
                # more people than channels: the rest speak on the caller's line
                voices, backend = _caller_voices(path, context, channels, speakers - 1, step)
                turns = split_caller(channels, voices)
        else:
            diarizer = _diarizer(context.model_dir)
            backend = diarizer.name
            if named and isinstance(diarizer, EmbeddingDiarizer):
                clustered = diarizer.cluster(
                    audio, speakers=speakers, progress=step, duration_s=duration_s
                )
                turns = identify(clustered, _voiceprints(context.engine, organisation_id))
            else:
                turns = diarizer.diarize(
                    audio, speakers=speakers, progress=step, duration_s=duration_s
                )
        transcript = None
        if transcribe:
            words = transcribe_words(
                recording_blocks(path, context.keyring),
                progress=_Scaled(reporter, share, 1.0),
                duration_s=duration_s,
            )
            transcript = attribute_words(turns, words)
        _finish(context.engine, job_id, JobStatus.done, result=result_json(turns, transcript),
                backend=backend)  # fmt: skip
        log.info(
            "diarization done",
            extra={**extra, "speakers": len({t.speaker for t in turns}),
                   "seconds": round(time.monotonic() - started, 2)},
        )  # fmt: skip
        return True
    except JobCancelled:
        log.info("diarization cancelled", extra=extra)
        return True
    except RecordingError as exc:  # a chunk past the header would not decrypt
        log.warning("diarization failed", extra={**extra, "reason": "unsupported"})
        _finish(context.engine, job_id, JobStatus.failed, error=f"the recording cannot be "
                f"read: {exc}", reason="unsupported")  # fmt: skip
        return True
    except DiarizationError as exc:
        log.warning("diarization failed", extra={**extra, "reason": exc.reason, "error": str(exc)})
        _finish(context.engine, job_id, JobStatus.failed, error=str(exc), reason=exc.reason)
        return True
    except Exception as exc:
        log.exception("diarization attempt failed", extra=extra)
        if attempt >= MAX_ATTEMPTS:
            _finish(context.engine, job_id, JobStatus.failed, error=str(exc), reason="failed")
            return True
        _finish(context.engine, job_id, JobStatus.queued, error=str(exc), reason=None)
        return False


def _caller_voices(
    path: Path, context: JobContext, channels: list[Turn], count: int, progress: Progress
) -> tuple[list[Turn], str]:
    """The diarization of a call's caller channel into ``count`` voices, with the agent's
    turns silenced (what the line echoed of the agent is no second caller), and the
    backend's name; no voices when the channel has too little speech.

    Only with a count: whether a second voice speaks at all is not something the voice
    encoder tells reliably (on the corpus, one voice split in two gives centroids as far
    apart, cosine 0.54-0.87, as two voices do, 0.60-0.87), and a caller split in two
    who was one is worse than two callers left as one."""
    audio, _ = recording_audio(path, context.keyring, channel=0)  # silenced in place below
    for turn in channels:
        if turn.speaker == CHANNEL_SPEAKERS[1]:
            audio[int(turn.start_s * SAMPLE_RATE_HZ) : int(turn.end_s * SAMPLE_RATE_HZ)] = 0.0
    diarizer = _diarizer(context.model_dir)
    try:
        voices = diarizer.diarize(audio, speakers=count, progress=progress)
    except DiarizationError as exc:
        if exc.reason != "too_short":
            raise
        log.info("caller channel not diarized", extra={"reason": exc.reason})
        return [], "channels"
    return voices, f"channels+{diarizer.name}"


def _voiceprints(engine: Engine, organisation_id: int) -> dict[str, np.ndarray]:
    with Session(engine) as session:
        rows = session.exec(
            select(Voiceprint).where(Voiceprint.organisation_id == organisation_id)
        ).all()
        return {row.name: from_bytes(row.embedding) for row in rows}


def _finish(
    engine: Engine,
    job_id: int,
    status: JobStatus,
    *,
    result: str | None = None,
    error: str | None = None,
    reason: str | None = None,
    backend: str | None = None,
) -> None:
    with Session(engine) as session:
        job = session.get(DiarizationJob, job_id)
        if job is None or job.status == JobStatus.cancelled:
            return
        job.status = status
        job.error, job.error_reason = error, reason
        if status == JobStatus.done:
            job.result, job.progress, job.backend = result, 1.0, backend
        if status in (JobStatus.done, JobStatus.failed):
            job.finished_at = utcnow()
        session.add(job)
        session.commit()


def open_jobs(session: Session, organisation_id: int) -> int:
    """The organisation's queued and running jobs."""
    return len(
        session.exec(
            select(DiarizationJob.id).where(
                DiarizationJob.organisation_id == organisation_id,
                col(DiarizationJob.status).in_([JobStatus.queued, JobStatus.running]),
            )
        ).all()
    )


class JobQueue(Protocol):
    def submit(self, job_id: int, *, duration_s: float | None) -> None: ...

    def close(self) -> None: ...


class ThreadJobQueue:
    """Jobs run in this process, ``workers`` at a time (the sidecar without Redis)."""

    def __init__(
        self,
        context: JobContext,
        *,
        workers: int = 1,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._context = context
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="diarize")
        self._sleep = sleep

    def submit(self, job_id: int, *, duration_s: float | None) -> None:
        self._pool.submit(self._run, job_id)

    def _run(self, job_id: int) -> None:
        for wait in (0.0, *RETRY_BACKOFF_S):
            self._sleep(wait)
            if run_job(self._context, job_id):
                return

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


RQ_CONTEXT: JobContext | None = None
"""Set by ``diarize-worker`` before it starts working (its forked job processes inherit
it)."""


def rq_run(job_id: int) -> None:
    """The function RQ runs: one attempt; raising makes RQ retry it."""
    if RQ_CONTEXT is None:
        raise RuntimeError("diarize-worker did not set up the job context")
    if not run_job(RQ_CONTEXT, job_id):
        raise RuntimeError(f"diarization job {job_id} failed; RQ retries it")


class RqJobQueue:
    """Jobs on an RQ queue in Redis, for ``python agent.py diarize-worker`` processes."""

    def __init__(self, connection: redis.Redis, key_prefix: str) -> None:
        from rq import Queue

        self.queue = Queue(queue_name(key_prefix), connection=connection)

    def submit(self, job_id: int, *, duration_s: float | None) -> None:
        from rq import Retry

        self.queue.enqueue(
            rq_run,
            job_id,
            job_timeout=int(timeout_for(duration_s)) + 30,
            retry=Retry(max=MAX_ATTEMPTS - 1, interval=[int(s) for s in RETRY_BACKOFF_S]),
        )

    def close(self) -> None:
        pass


def queue_name(key_prefix: str) -> str:
    return f"{key_prefix}diarization"
