"""An organisation's own audio (``POST /v1/recordings``), turned into a sealed recording.

The format is read from the file's first bytes, never from its name (WAV, FLAC, Ogg
Vorbis/Opus, MP3, AIFF); libsndfile decodes it block by block, so memory stays bounded
whatever its length, and the PCM is sealed as it is decoded
(``storage.recording_files``) at the file's own rate and channels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from storage.recording_files import Keyring, RecordingWriter

MIN_SECONDS = 0.5
MAX_CHANNELS = 8
BLOCK_FRAMES = 32_768

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"RIFF", 0, "WAV"),
    (b"RF64", 0, "WAV"),
    (b"fLaC", 0, "FLAC"),
    (b"OggS", 0, "OGG"),
    (b"ID3", 0, "MP3"),
    (b"FORM", 0, "AIFF"),
)


class UploadRefused(Exception):
    """Why a file cannot be kept, fit to show the uploader; ``status`` is 415 or 422."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class SealedUpload:
    kind: str
    sample_rate: int
    channels: int
    duration_s: float


def sniff(head: bytes) -> str:
    """The container ``head`` (the file's first bytes) says it is; UploadRefused (415)
    for anything else."""
    for magic, offset, kind in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if kind == "WAV" and head[8:12] != b"WAVE":
                break
            return kind
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:
        return "MP3"  # an MPEG audio frame without an ID3 tag
    raise UploadRefused(
        "unsupported audio format: send WAV, FLAC, Ogg, MP3 or AIFF (read from the file's "
        "content, not its name)",
        status=415,
    )


def _open_audio(source: Path) -> tuple[str, sf.SoundFile]:
    """The file's sniffed kind and a decoder for it; UploadRefused if it is neither."""
    with source.open("rb") as f:
        kind = sniff(f.read(12))
    try:
        return kind, sf.SoundFile(source)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise UploadRefused(f"the {kind} file cannot be decoded ({exc})") from None


def seal_upload(source: Path, target: Path, keyring: Keyring) -> SealedUpload:
    """Decode ``source`` and seal it at ``target``; UploadRefused when it is not audio we
    can read, is too short, or has too many channels (``target`` is then not left)."""
    kind, audio = _open_audio(source)
    with audio:
        if not 1 <= audio.channels <= MAX_CHANNELS:
            raise UploadRefused(f"{audio.channels} channels; at most {MAX_CHANNELS}")
        writer = RecordingWriter(
            target, keyring, sample_rate=audio.samplerate, channels=audio.channels
        )
        frames = 0
        try:
            for block in audio.blocks(BLOCK_FRAMES, dtype="int16", always_2d=True):
                frames += len(block)
                writer.write(np.ascontiguousarray(block).tobytes())
        except (sf.LibsndfileError, RuntimeError) as exc:
            writer.abort()
            raise UploadRefused(f"the {kind} file is damaged ({exc})") from None
        duration_s = frames / audio.samplerate
        if duration_s < MIN_SECONDS:
            writer.abort()
            raise UploadRefused(
                f"{duration_s:.2f} s of audio: too short (at least {MIN_SECONDS} s)"
            )
        writer.close()
    return SealedUpload(kind, audio.samplerate, audio.channels, round(duration_s, 3))


def read_mono(source: Path, sample_rate_hz: int, *, max_seconds: float) -> np.ndarray:
    """An audio file (format sniffed, as for uploads) as mono float32 at ``sample_rate_hz``,
    decoded and resampled block by block; UploadRefused when it is not audio we can read,
    is shorter than :data:`MIN_SECONDS` or longer than ``max_seconds``."""
    import soxr

    kind, audio = _open_audio(source)
    with audio:
        if audio.frames > max_seconds * audio.samplerate:
            raise UploadRefused(f"longer than {max_seconds:.0f} s")
        resampler = soxr.ResampleStream(audio.samplerate, sample_rate_hz, 1, dtype="float32")
        pieces = []
        try:
            for block in audio.blocks(BLOCK_FRAMES, dtype="float32", always_2d=True):
                pieces.append(resampler.resample_chunk(block.mean(axis=1)))
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise UploadRefused(f"the {kind} file is damaged ({exc})") from None
        pieces.append(resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
    mono = np.concatenate(pieces)
    if len(mono) < MIN_SECONDS * sample_rate_hz:
        raise UploadRefused(
            f"{len(mono) / sample_rate_hz:.2f} s of audio: too short (at least {MIN_SECONDS} s)"
        )
    return mono
