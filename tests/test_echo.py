"""The echo canceller between the agent's voice and the caller's channel: a line that
echoes the agent (10 dB down, 100 ms late, as through a phone hybrid) is cleaned; a line
that does not is passed through untouched, so a caller's barge-in keeps its speed."""

from __future__ import annotations

import numpy as np
import pytest
import soxr
from livekit import rtc
from livekit.agents.voice.io import AudioInput

from agent.echo import EchoCanceller
from agent.wav_io import CapturedAudioOutput
from plugins.local_tts import PiperTTS

RATE = 16_000
N = 320  # 20 ms


class Frames(AudioInput):
    def __init__(self, frames: list[rtc.AudioFrame]) -> None:
        super().__init__(label="frames")
        self._frames = iter(frames)

    async def __anext__(self) -> rtc.AudioFrame:
        try:
            return next(self._frames)
        except StopIteration:
            raise StopAsyncIteration from None


@pytest.fixture(scope="module")
def agent_voice() -> np.ndarray:
    """4 s of the agent's voice at 24 kHz."""
    tts = PiperTTS()
    line = "Thanks for waiting. I have looked at your account, and the router is back."
    pcm = np.frombuffer(tts.render_pcm(line), dtype=np.int16)
    voice = soxr.resample(pcm, tts.sample_rate, 24_000)[: 4 * 24_000]
    return voice[: len(voice) // 480 * 480]


def db(x: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(x.astype(np.float64) ** 2) + 1e-9))


async def run_line(agent_voice: np.ndarray, caller: np.ndarray) -> tuple[np.ndarray, EchoCanceller]:
    """The agent speaks ``agent_voice`` while ``caller`` (16 kHz) arrives; returns what
    the session would hear."""
    canceller = EchoCanceller()
    out = canceller.output(CapturedAudioOutput())
    for i in range(0, len(agent_voice), 480):
        await out.capture_frame(rtc.AudioFrame(agent_voice[i : i + 480].tobytes(), 24_000, 1, 480))
    frames = [
        rtc.AudioFrame(caller[i : i + N].tobytes(), RATE, 1, N)
        for i in range(0, len(caller) - N + 1, N)
    ]
    heard = [np.frombuffer(f.data, dtype=np.int16) async for f in canceller.input(Frames(frames))]
    return np.concatenate(heard), canceller


async def test_a_line_that_echoes_the_agent_is_cleaned(agent_voice):
    voice16 = soxr.resample(agent_voice, 24_000, RATE)
    delay = int(0.1 * RATE)
    echo = (np.concatenate([np.zeros(delay), voice16])[: len(voice16)] * 10 ** (-10 / 20)).astype(
        np.int16
    )
    heard, canceller = await run_line(agent_voice, echo)
    assert canceller.echo_detected is True
    tail = slice(2 * RATE, len(heard))
    assert db(heard[tail]) < db(echo[tail]) - 30, (db(heard[tail]), db(echo[tail]))


async def test_a_line_without_echo_passes_the_caller_untouched(agent_voice, sample_wav_pcm):
    caller = sample_wav_pcm[int(12.3 * RATE) : int(16.3 * RATE)]  # a real caller, talking over
    heard, canceller = await run_line(agent_voice, caller)
    assert canceller.echo_detected is False
    # judged in the first 0.6 s of the agent's voice; from then on the raw audio
    after = slice(RATE, len(heard))
    assert np.array_equal(heard[after], caller[: len(heard)][after])


async def test_odd_frame_sizes_and_stereo_are_handled(agent_voice):
    canceller = EchoCanceller()
    odd = [rtc.AudioFrame(np.ones(240, np.int16).tobytes(), RATE, 1, 240) for _ in range(3)]
    stereo = rtc.AudioFrame(np.ones(640, np.int16).tobytes(), RATE, 2, 320)
    heard = [f async for f in canceller.input(Frames([*odd, stereo]))]
    # 15 ms frames come out as whole 10 ms pieces (the rest waits); stereo passes through
    assert [f.samples_per_channel for f in heard] == [160, 320, 160, 320]
    assert heard[-1] is stereo
