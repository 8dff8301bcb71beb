"""The simulated line: what the session receives from the caller, frame by frame, and
how the simulated speaker plays, pauses, resumes and cuts the agent's replies."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from livekit import rtc

from agent.wav_io import (
    ALIGN_FRAMES,
    CALLER_SAMPLE_RATE_HZ,
    FRAME_MS,
    CallerAudioInput,
    CapturedAudioOutput,
)

SAMPLES_PER_FRAME = CALLER_SAMPLE_RATE_HZ * FRAME_MS // 1000


async def take(line: CallerAudioInput, count: int) -> np.ndarray:
    frames = [await line.__anext__() for _ in range(count)]
    assert all(f.sample_rate == CALLER_SAMPLE_RATE_HZ and f.num_channels == 1 for f in frames)
    return np.concatenate(
        [np.zeros(0, np.int16)] + [np.frombuffer(f.data, np.int16) for f in frames]
    )


@pytest.mark.parametrize("frames_before_play", [0, 1, 5, ALIGN_FRAMES, ALIGN_FRAMES + 3])
async def test_the_recording_starts_on_an_alignment_boundary_and_arrives_whole(
    frames_before_play: int,
) -> None:
    # 1.01 s of a non-zero ramp: not a whole number of frames
    recording = (np.arange(16_160) % 1000 + 1).astype(np.int16)
    line = CallerAudioInput(recording, realtime=False)
    assert not (await take(line, frames_before_play)).any()  # silence until play()
    line.play()
    frames_needed = -(-len(recording) // SAMPLES_PER_FRAME)
    stream = await take(line, ALIGN_FRAMES + frames_needed + 2)
    start = int(np.flatnonzero(stream)[0])
    assert (frames_before_play * SAMPLES_PER_FRAME + start) % (
        ALIGN_FRAMES * SAMPLES_PER_FRAME
    ) == 0
    assert np.array_equal(stream[start : start + len(recording)], recording)
    assert not stream[start + len(recording) :].any()  # then silence again
    assert line.done.is_set()


async def test_close_ends_the_stream() -> None:
    line = CallerAudioInput(np.ones(320, dtype=np.int16), realtime=False)
    await take(line, 1)
    line.close()
    with pytest.raises(StopAsyncIteration):
        await line.__anext__()


RATE = 24_000
TOLERANCE_S = 0.15  # this machine is shared: sleeps overrun


class Speaker(CapturedAudioOutput):
    """Records what livekit would be told about playback."""

    def __init__(self) -> None:
        super().__init__(RATE)
        self.finished: list[tuple[float, bool]] = []
        self._finishing = asyncio.Event()

    def on_playback_finished(self, *, playback_position: float, interrupted: bool, **_) -> None:  # type: ignore[no-untyped-def,override]
        self.finished.append((playback_position, interrupted))
        self._finishing.set()

    async def finishes(self, count: int = 1) -> None:
        while len(self.finished) < count:
            self._finishing.clear()
            await self._finishing.wait()


async def speak(speaker: CapturedAudioOutput, seconds: float) -> None:
    samples = int(seconds * RATE)
    tone = (np.arange(samples) % 100 + 1).astype(np.int16)  # never silent
    await speaker.capture_frame(rtc.AudioFrame(tone.tobytes(), RATE, 1, samples))
    speaker.flush()


async def test_a_paused_reply_resumes_where_it_stopped_after_a_gap() -> None:
    speaker = Speaker()
    t0 = time.time()
    await speak(speaker, 0.6)
    await asyncio.sleep(0.2)
    speaker.pause()
    await asyncio.sleep(0.4)
    assert speaker.finished == []  # held while paused, though its audio has run out
    speaker.resume()
    await asyncio.wait_for(speaker.finishes(), timeout=3)

    assert speaker.finished == [(pytest.approx(0.6), False)]
    timeline = speaker.render(t0)
    loud = np.abs(timeline) > 0
    assert loud.sum() == int(0.6 * RATE)  # every sample played once
    # the pause is a silent gap of ~0.4 s after ~0.2 s of audio
    stops = np.flatnonzero(np.diff(loud.astype(int)) == -1)
    restarts = np.flatnonzero(np.diff(loud.astype(int)) == 1)
    assert len(stops) == 2 and abs(stops[0] / RATE - 0.2) < TOLERANCE_S  # the pause, the end
    assert abs((restarts[-1] - stops[0]) / RATE - 0.4) < TOLERANCE_S
    assert abs(len(timeline) / RATE - 1.0) < 2 * TOLERANCE_S


async def test_clearing_a_paused_reply_keeps_only_what_played_before_the_pause() -> None:
    speaker = Speaker()
    await speak(speaker, 1.0)
    await asyncio.sleep(0.3)
    speaker.pause()
    await asyncio.sleep(0.2)
    speaker.clear_buffer()
    await asyncio.wait_for(speaker.finishes(), timeout=3)

    [(position, interrupted)] = speaker.finished
    assert interrupted and abs(position - 0.3) < TOLERANCE_S
    # the pause outlives the cleared reply: the next one waits for resume()
    await speak(speaker, 0.2)
    await asyncio.sleep(0.4)
    assert len(speaker.finished) == 1
    speaker.resume()
    await asyncio.wait_for(speaker.finishes(2), timeout=3)
    assert speaker.finished[1] == (pytest.approx(0.2), False)
