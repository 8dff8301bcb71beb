"""The simulated caller line: what the session receives, frame by frame."""

from __future__ import annotations

import numpy as np
import pytest

from agent.wav_io import ALIGN_FRAMES, CALLER_SAMPLE_RATE_HZ, FRAME_MS, CallerAudioInput

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
