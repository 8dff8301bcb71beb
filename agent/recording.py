"""A call's recording: caller on the left channel, agent on the right, 16 kHz, on one
clock, encrypted as it is written (``storage.recording_files``).

The clock is the caller's audio: every caller frame that comes in moves the recording on
by its length, and the agent's audio is laid beside it at the pace the caller hears it.
Frames reach the agent's output faster than real time, so they are queued and drawn
sample for sample against the caller's; while the agent is paused (the caller may be
barging in) silence is drawn; a cleared buffer (an interruption) drops what was queued,
so the agent's channel stops where the caller stopped hearing it. The same in a room, the
console and ``simulate``: the recorder wraps the session's audio input and output.

Memory is bounded: the queue holds at most one reply's audio; the file is written in
64 KiB chunks.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr
from livekit import rtc
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities

from agent.sidecar_client import SidecarClient, SidecarUnavailable
from storage.recording_files import Keyring, RecordingWriter

log = logging.getLogger("agent.recording")

RATE = 16_000
CHANNELS = 2  # caller, agent
MAX_QUEUED_S = 120.0
"""The most agent audio held ahead of the caller's clock (a reply longer than this is
cut in the recording, never in the call)."""


UNMETERED = "local"
"""The organisation part of the file name of a call nobody is billed for: kept here."""


def recording_path(directory: Path, organisation_id: int | None, call_id: str) -> Path:
    """``<organisation>--<call>.varec``: what the uploader needs to know, in the name."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id)[:64]
    return directory / f"{organisation_id or UNMETERED}--{name}.varec"


class RecordingUploader:
    """Hands the worker's sealed recordings to the sidecar (from the worker's link thread,
    with the outbox): a stored file is deleted here; one the sidecar refuses for good is
    moved to ``rejected/`` and logged; anything else is tried again next round."""

    def __init__(self, directory: Path, client: SidecarClient) -> None:
        self._dir = directory
        self._client = client

    async def upload_ready(self) -> int:
        """One round; how many were stored."""
        stored = 0
        for path in sorted(self._dir.glob("*--*.varec")):
            org, _, call_id = path.stem.partition("--")
            if not org.isdigit():
                continue  # unmetered: nobody to hand it to
            try:
                status = await self._client.put_recording(int(org), call_id, path)
            except SidecarUnavailable as exc:
                log.warning("recording upload failed; retrying", extra={"error": str(exc)})
                return stored
            if status == 201:
                path.unlink(missing_ok=True)
                stored += 1
            else:
                rejected = self._dir / "rejected"
                rejected.mkdir(exist_ok=True)
                path.replace(rejected / path.name)
                log.error(
                    "the sidecar refused a recording; kept aside",
                    extra={"status": status, "file": path.name},
                )
        return stored

    async def run(self, stop: threading.Event, *, every_s: float = 5.0) -> None:
        while not stop.is_set():
            try:
                await self.upload_ready()
            except Exception:
                log.exception("recording upload round failed")
            await asyncio.to_thread(stop.wait, every_s)


@dataclass(frozen=True)
class RecordingSummary:
    path: Path
    duration_s: float
    agent_audible_s: float


class _Mono16k:
    """One direction's frames as 16 kHz mono int16 (soxr, streaming: one resampler per
    source rate, rebuilt when the rate changes)."""

    def __init__(self) -> None:
        self._rate: int | None = None
        self._stream: soxr.ResampleStream | None = None

    def __call__(self, frame: rtc.AudioFrame) -> np.ndarray:
        pcm = np.frombuffer(frame.data, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm.reshape(-1, frame.num_channels).mean(axis=1).astype(np.int16)
        if frame.sample_rate == RATE:
            return pcm
        if frame.sample_rate != self._rate:
            self._rate = frame.sample_rate
            self._stream = soxr.ResampleStream(frame.sample_rate, RATE, 1, dtype="int16")
        assert self._stream is not None
        return np.asarray(self._stream.resample_chunk(pcm), dtype=np.int16)

    def flush(self) -> np.ndarray:
        """What the resampler still holds (its filter's delay), at the end of a stream;
        the next frame starts a new one."""
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
        self._stream, self._rate = None, None
        return np.asarray(tail, dtype=np.int16)


class CallRecorder:
    """Wrap the session's input with :meth:`input` and its output with :meth:`output`;
    :meth:`close` at the call's end."""

    def __init__(self, path: Path, keyring: Keyring) -> None:
        self._writer = RecordingWriter(path, keyring, sample_rate=RATE, channels=CHANNELS)
        self.path = path
        self._caller = _Mono16k()
        self._agent = _Mono16k()
        self._queued = np.zeros(0, dtype=np.int16)
        self._paused = False
        self._samples = 0
        self._agent_audible = 0
        self._closed = False

    def input(self, source: AudioInput) -> AudioInput:
        return _RecordingInput(self, source)

    def output(self, sink: AudioOutput) -> AudioOutput:
        return _RecordingOutput(self, sink)

    def close(self) -> RecordingSummary | None:
        """Seal the file; None (and no file) when no caller audio was ever recorded."""
        if self._closed:
            return None
        self._write(self._caller.flush())
        self._closed = True
        if self._samples == 0:
            self._writer.abort()
            return None
        self._writer.close()
        summary = RecordingSummary(
            self.path, self._samples / RATE, round(self._agent_audible / RATE, 3)
        )
        log.info(
            "call recorded",
            extra={
                "duration_s": round(summary.duration_s, 2),
                "agent_audible_s": summary.agent_audible_s,
            },
        )
        return summary

    # -- the two sides -----------------------------------------------------------------

    def _heard_from_caller(self, frame: rtc.AudioFrame) -> None:
        if not self._closed:
            self._write(self._caller(frame))

    def _write(self, caller: np.ndarray) -> None:
        """``caller``'s samples beside as many of the agent's as the caller heard."""
        n = len(caller)
        if n == 0:
            return
        agent = np.zeros(n, dtype=np.int16)
        if not self._paused:
            taken = self._queued[:n]
            agent[: len(taken)] = taken
            self._queued = self._queued[len(taken) :]
            self._agent_audible += int(np.count_nonzero(np.abs(taken) > 64))
        stereo = np.empty(2 * n, dtype=np.int16)
        stereo[0::2], stereo[1::2] = caller, agent
        self._writer.write(stereo.tobytes())
        self._samples += n

    def _said_by_agent(self, frame: rtc.AudioFrame) -> None:
        if not self._closed:
            self._queue(self._agent(frame))

    def _reply_ended(self) -> None:
        """The end of one stretch of the agent's audio: what the resampler holds is its end."""
        if not self._closed:
            self._queue(self._agent.flush())

    def _queue(self, pcm: np.ndarray) -> None:
        room = int(MAX_QUEUED_S * RATE) - len(self._queued)
        self._queued = np.concatenate([self._queued, pcm[: max(0, room)]])

    def _cleared(self) -> None:
        self._agent.flush()  # cut: its held samples were never heard either
        self._queued = np.zeros(0, dtype=np.int16)


class _RecordingOutput(AudioOutput):
    def __init__(self, recorder: CallRecorder, sink: AudioOutput) -> None:
        super().__init__(
            label="recorded",
            capabilities=AudioOutputCapabilities(pause=True),
            next_in_chain=sink,
            sample_rate=sink.sample_rate,
        )
        self._recorder = recorder

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self._recorder._said_by_agent(frame)
        assert self.next_in_chain is not None
        await self.next_in_chain.capture_frame(frame)

    def flush(self) -> None:
        super().flush()
        self._recorder._reply_ended()
        assert self.next_in_chain is not None
        self.next_in_chain.flush()

    def clear_buffer(self) -> None:
        self._recorder._cleared()
        assert self.next_in_chain is not None
        self.next_in_chain.clear_buffer()

    def pause(self) -> None:
        self._recorder._paused = True
        super().pause()

    def resume(self) -> None:
        self._recorder._paused = False
        super().resume()


class _RecordingInput(AudioInput):
    def __init__(self, recorder: CallRecorder, source: AudioInput) -> None:
        super().__init__(label="recorded", source=source)
        self._recorder = recorder

    async def __anext__(self) -> rtc.AudioFrame:
        assert self.source is not None
        frame = await self.source.__anext__()
        self._recorder._heard_from_caller(frame)
        return frame
