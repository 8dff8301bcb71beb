"""Audio input and output for an ``AgentSession`` with no room and no sound card.

:class:`CallerAudioInput` plays a caller recording into the session (paced in real time,
or as fast as the session takes it) and :class:`CapturedAudioOutput` plays the agent's
speech out on a simulated clock, so interruptions and playback positions behave as they
would on a line, and keeps what was heard for a WAV file.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from livekit import rtc
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities

CALLER_SAMPLE_RATE_HZ = 16_000
AGENT_SAMPLE_RATE_HZ = 24_000
"""The rate the agent's captured speech is kept and written at."""
FRAME_MS = 20
ALIGN_FRAMES = 8
"""The recording starts after a multiple of this many frames of the input stream: 160 ms,
a whole number of Silero VAD windows (512 samples at 16 kHz). Where the recording falls
against those windows changes what the VAD cuts and so what Whisper hears; aligning it
makes a simulated call reproducible, whenever :meth:`CallerAudioInput.play` is called."""


class CallerAudioError(ValueError):
    """The caller recording cannot be used; the message says why, for the operator."""


def load_caller_audio(path: Path, sample_rate_hz: int = CALLER_SAMPLE_RATE_HZ) -> np.ndarray:
    """Read any audio file soundfile can (WAV, FLAC, OGG ...), any rate and channel count,
    as 16-bit mono at ``sample_rate_hz``.

    Raises:
        CallerAudioError: missing, unreadable, not audio, or empty.
    """
    if not path.exists():
        raise CallerAudioError(f"caller audio not found: {path}")
    if not path.is_file():
        raise CallerAudioError(f"caller audio is not a file: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise CallerAudioError(f"not a readable audio file: {path} ({exc})") from exc
    if data.shape[0] == 0:
        raise CallerAudioError(f"caller audio is empty (no samples): {path}")
    mono = data.mean(axis=1)
    if rate != sample_rate_hz:
        # soxr's high-quality default: band-limits 44.1/48 kHz cleanly down to 16 kHz
        mono = soxr.resample(mono, rate, sample_rate_hz)
    return (np.clip(mono, -1.0, 1.0) * 32767).astype(np.int16)


class CallerAudioInput(AudioInput):
    """Feeds silence until :meth:`play` is called, then the recording (from the next
    ``ALIGN_FRAMES`` boundary), then silence again until :meth:`close`; the session needs
    the trailing silence to hear the caller stop.
    """

    def __init__(self, pcm: np.ndarray, *, realtime: bool = True) -> None:
        super().__init__(label="simulated-caller")
        self._pcm = pcm
        self._realtime = realtime
        self._samples_per_frame = CALLER_SAMPLE_RATE_HZ * FRAME_MS // 1000
        self._silence = np.zeros(self._samples_per_frame, dtype=np.int16)
        self._pos = 0
        self._frames_out = 0
        self._playing = False
        self._closed = False
        self._next_deadline: float | None = None
        self.done = asyncio.Event()
        """Set once the whole recording has been fed."""

    def play(self) -> None:
        self._playing = True

    def close(self) -> None:
        self._closed = True

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        if self._playing and self._pos == 0 and self._frames_out % ALIGN_FRAMES:
            feeding = False  # wait for the next alignment boundary
        else:
            feeding = self._playing and self._pos < len(self._pcm)
        self._frames_out += 1
        if feeding:
            chunk = self._pcm[self._pos : self._pos + self._samples_per_frame]
            self._pos += len(chunk)
            if len(chunk) < self._samples_per_frame:
                chunk = np.concatenate([chunk, self._silence[len(chunk) :]])
            if self._pos >= len(self._pcm):
                self.done.set()
        else:
            chunk = self._silence
        if self._realtime or not feeding:
            await self._pace()
        else:
            self._next_deadline = None
            await asyncio.sleep(0)
        return rtc.AudioFrame(
            data=chunk.tobytes(),
            sample_rate=CALLER_SAMPLE_RATE_HZ,
            num_channels=1,
            samples_per_channel=self._samples_per_frame,
        )

    async def _pace(self) -> None:
        # absolute deadlines: sleeping a fixed 20 ms per frame would drift late
        now = time.monotonic()
        if self._next_deadline is None or self._next_deadline < now - 0.2:
            self._next_deadline = now
        self._next_deadline += FRAME_MS / 1000
        await asyncio.sleep(max(0.0, self._next_deadline - now))


@dataclass
class PlayedSegment:
    started_at: float
    """Wall-clock time the first sample played."""
    pcm: list[bytes] = field(default_factory=list)
    played_until: float = 0.0
    """Wall-clock time the last queued sample finishes playing."""
    interrupted: bool = False


class CapturedAudioOutput(AudioOutput):
    """A virtual speaker: audio "plays" in real time from when it arrives (a late frame
    leaves a gap, as on a line), and a cleared buffer cuts the segment where playback was.
    """

    def __init__(self, sample_rate_hz: int = AGENT_SAMPLE_RATE_HZ) -> None:
        super().__init__(
            label="simulated-speaker",
            capabilities=AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate_hz,
        )
        self.sample_rate_hz = sample_rate_hz
        self.segments: list[PlayedSegment] = []
        self._playing: PlayedSegment | None = None
        self._interrupted = asyncio.Event()
        self._finish_task: asyncio.Task[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        now = time.time()
        if self._playing is None:
            self._playing = PlayedSegment(started_at=now, played_until=now)
            self.segments.append(self._playing)
            self.on_playback_started(created_at=now)
        seg = self._playing
        if seg.interrupted:
            return
        seg.pcm.append(bytes(frame.data))
        seg.played_until = max(seg.played_until, now) + frame.duration

    def flush(self) -> None:
        super().flush()
        if self._playing is not None and self._finish_task is None:
            self._finish_task = asyncio.create_task(self._finish_when_played(self._playing))

    async def _finish_when_played(self, seg: PlayedSegment) -> None:
        remaining_s = max(0.0, seg.played_until - time.time())
        with contextlib.suppress(TimeoutError):  # played to the end, not interrupted
            await asyncio.wait_for(self._interrupted.wait(), timeout=remaining_s)
        self._playing, self._finish_task = None, None
        self._interrupted.clear()
        self.on_playback_finished(
            playback_position=self._duration(seg), interrupted=seg.interrupted
        )

    def clear_buffer(self) -> None:
        seg = self._playing
        if seg is None or seg.interrupted:
            return
        played_s = max(0.0, min(time.time(), seg.played_until) - seg.started_at)
        keep_bytes = int(played_s * self.sample_rate_hz) * 2
        seg.pcm = [b"".join(seg.pcm)[:keep_bytes]]
        seg.played_until = seg.started_at + played_s
        seg.interrupted = True
        self._interrupted.set()

    def _duration(self, seg: PlayedSegment) -> float:
        return sum(len(b) for b in seg.pcm) / 2 / self.sample_rate_hz

    def render(self, t0: float) -> np.ndarray:
        """Everything played, as 16-bit mono, placed on a timeline starting at ``t0``."""
        if not self.segments:
            return np.zeros(0, dtype=np.int16)
        end_s = max(s.played_until for s in self.segments) - t0
        out = np.zeros(int(end_s * self.sample_rate_hz) + 1, dtype=np.int16)
        for seg in self.segments:
            pcm = np.frombuffer(b"".join(seg.pcm), dtype=np.int16)
            start = max(0, int((seg.started_at - t0) * self.sample_rate_hz))
            pcm = pcm[: len(out) - start]
            out[start : start + len(pcm)] = pcm
        return out
