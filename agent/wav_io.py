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
    """Wall-clock time the last queued sample finishes playing (while not paused)."""
    pauses: list[tuple[float, float]] = field(default_factory=list)
    """(seconds of audio played before it, seconds it lasted) of each pause."""
    interrupted: bool = False


class CapturedAudioOutput(AudioOutput):
    """A virtual speaker: audio "plays" in real time from when it arrives (a late frame
    leaves a gap, as on a line), a pause holds it back until resumed (livekit pauses the
    agent while the caller may be barging in, and resumes on a false interruption), and a
    cleared buffer cuts the segment where playback was.
    """

    def __init__(self, sample_rate_hz: int = AGENT_SAMPLE_RATE_HZ) -> None:
        super().__init__(
            label="simulated-speaker",
            capabilities=AudioOutputCapabilities(pause=True),
            sample_rate=sample_rate_hz,
        )
        self.sample_rate_hz = sample_rate_hz
        self.segments: list[PlayedSegment] = []
        self._playing: PlayedSegment | None = None
        self._changed = asyncio.Event()
        """Set on pause, resume and clear: the playout wait looks again."""
        self._finish_task: asyncio.Task[None] | None = None
        self._paused_at: float | None = None
        self._paused_position_s = 0.0
        self._held_s = 0.0
        """Audio queued but not played when the pause began, plus what arrived since."""

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
        if self._paused_at is not None:
            self._held_s += frame.duration
        else:
            seg.played_until = max(seg.played_until, now) + frame.duration

    def flush(self) -> None:
        super().flush()
        if self._playing is not None and self._finish_task is None:
            self._finish_task = asyncio.create_task(self._finish_when_played(self._playing))

    def pause(self) -> None:
        super().pause()
        if self._paused_at is not None:
            return
        now = time.time()
        self._paused_at = now
        seg = self._playing
        self._paused_position_s = self._position_s(seg, now) if seg else 0.0
        self._held_s = max(0.0, seg.played_until - now) if seg else 0.0
        self._changed.set()

    def resume(self) -> None:
        super().resume()
        if self._paused_at is None:
            return
        now = time.time()
        seg = self._playing
        if seg is not None and not seg.interrupted:
            # a segment that began during the pause waited only since it began
            waited_s = now - max(self._paused_at, seg.started_at)
            seg.pauses.append((self._paused_position_s, waited_s))
            seg.played_until = now + self._held_s
        self._paused_at = None
        self._changed.set()

    async def _finish_when_played(self, seg: PlayedSegment) -> None:
        while not seg.interrupted:
            if self._paused_at is None:
                remaining_s = seg.played_until - time.time()
                if remaining_s <= 0:
                    break  # played to the end
            else:
                remaining_s = None  # held until resumed or cleared
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining_s)
        self._playing, self._finish_task = None, None
        self.on_playback_finished(
            playback_position=self._duration(seg), interrupted=seg.interrupted
        )

    def clear_buffer(self) -> None:
        seg = self._playing
        if seg is None or seg.interrupted:
            return
        if self._paused_at is not None:
            stopped_at, played_s = self._paused_at, self._paused_position_s
            # the pause goes on for the next segment; the held audio is dropped
            self._paused_at, self._held_s = time.time(), 0.0
            self._paused_position_s = 0.0
        else:
            stopped_at = min(time.time(), seg.played_until)
            played_s = self._position_s(seg, stopped_at)
        keep_bytes = int(played_s * self.sample_rate_hz) * 2
        seg.pcm = [b"".join(seg.pcm)[:keep_bytes]]
        seg.played_until = stopped_at
        seg.interrupted = True
        self._changed.set()

    def _position_s(self, seg: PlayedSegment, at: float) -> float:
        """Seconds of the segment's audio played by wall-clock time ``at`` (not paused)."""
        return max(0.0, self._duration(seg) - max(0.0, seg.played_until - at))

    def _duration(self, seg: PlayedSegment) -> float:
        return sum(len(b) for b in seg.pcm) / 2 / self.sample_rate_hz

    def _placed(self, seg: PlayedSegment, t0: float) -> list[tuple[int, np.ndarray]]:
        """The segment's audio as (start sample on the timeline from ``t0``, samples)
        pieces: a pause leaves silence between two pieces."""
        pcm = np.frombuffer(b"".join(seg.pcm), dtype=np.int16)
        pieces, cursor_s, taken = [], seg.started_at - t0, 0
        for played_s, paused_s in seg.pauses:
            cut = min(len(pcm), int(played_s * self.sample_rate_hz))
            pieces.append((int(cursor_s * self.sample_rate_hz), pcm[taken:cut]))
            cursor_s += (cut - taken) / self.sample_rate_hz + paused_s
            taken = cut
        pieces.append((int(cursor_s * self.sample_rate_hz), pcm[taken:]))
        return [(max(0, start), piece) for start, piece in pieces]

    def render(self, t0: float) -> np.ndarray:
        """Everything played, as 16-bit mono, placed on a timeline starting at ``t0``."""
        pieces = [piece for seg in self.segments for piece in self._placed(seg, t0)]
        if not pieces:
            return np.zeros(0, dtype=np.int16)
        out = np.zeros(max(start + len(pcm) for start, pcm in pieces) + 1, dtype=np.int16)
        for start, pcm in pieces:
            out[start : start + len(pcm)] = pcm
        return out
