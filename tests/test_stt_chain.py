"""The STT chain: the real Deepgram plugin against the loopback server with faults
injected, then the local Whisper. What matters is that the caller is heard: their words
reach the transcript from whichever tier could hear them, including the words the failing
provider was hearing when it died."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from livekit import rtc
from livekit.agents import stt
from livekit.plugins import deepgram

from plugins.circuit_breaker import CircuitBreaker
from plugins.local_stt import WhisperSTT
from plugins.stt_chain import STTChain
from tests.loopback.deepgram_server import DeepgramServer

pytestmark = pytest.mark.usefixtures("job_http_session")

NO_RESULT_S = 1.0
FRAME = 320  # 20 ms at 16 kHz


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def diane() -> np.ndarray:
    """Corpus: "This is Diane in New Jersey." on a real phone line, then 1 s of silence."""
    from bench.corpus import SAMPLE_WAV

    pcm, rate = sf.read(str(SAMPLE_WAV), dtype="int16")
    return np.concatenate([pcm[int(12.3 * rate) : int(14.5 * rate)], np.zeros(rate, np.int16)])


def chain_for(
    server: DeepgramServer, vad_model: Any, breaker: CircuitBreaker | None = None
) -> STTChain:
    cloud = deepgram.STT(api_key="dg-test", base_url=server.listen_url)
    return STTChain(
        [(cloud, breaker or CircuitBreaker("stt/deepgram", clock=Clock())), (WhisperSTT(), None)],
        vad=vad_model,
        no_result_s=NO_RESULT_S,
    )


async def hear(
    chain: STTChain, pcm: np.ndarray, *, realtime: bool = False, midway: Any = None
) -> tuple[str, float]:
    """Feed ``pcm`` (20 ms frames; in real time if asked), calling ``midway()`` half-way;
    returns (the final transcripts joined, seconds from the end of the audio to the
    first final)."""
    stream = chain.stream()
    finals: list[str] = []
    first_final_at: float | None = None
    heard = asyncio.Event()

    async def read() -> None:
        nonlocal first_final_at
        async for ev in stream:
            if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives[0].text:
                finals.append(ev.alternatives[0].text)
                first_final_at = first_final_at or time.monotonic()
                heard.set()

    reader = asyncio.create_task(read())
    frames = [pcm[i : i + FRAME] for i in range(0, len(pcm) - FRAME + 1, FRAME)]
    for i, frame in enumerate(frames):
        if midway is not None and i == len(frames) // 2:
            midway()
        stream.push_frame(rtc.AudioFrame(frame.tobytes(), 16_000, 1, FRAME))
        await asyncio.sleep(0.02 if realtime else 0)
    ended_at = time.monotonic()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(heard.wait(), 15)
    stream.end_input()
    await asyncio.wait_for(reader, 15)
    await stream.aclose()
    assert first_final_at is not None, "the caller was never heard"
    return " ".join(finals), max(0.0, first_final_at - ended_at)


async def test_a_healthy_deepgram_hears_the_caller_and_nothing_falls_back(
    deepgram_server, vad_model, diane
):
    deepgram_server.options.transcripts = ["this is diane in new jersey"]
    chain = chain_for(deepgram_server, vad_model)
    text, _ = await hear(chain, diane)
    assert text == "this is diane in new jersey"
    assert chain.fallback_events == []
    await chain.aclose()


FAULTS: dict[str, tuple[dict[str, Any], str]] = {
    "refused": ({"refuse": True}, "connection"),
    "500": ({"status": 500}, "http_5xx"),
    "429": ({"status": 429}, "rate_limited"),
    "connects then silent": ({"stall_s": 60.0}, "no_result"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
async def test_every_fault_of_deepgram_leaves_the_caller_heard_by_whisper(
    deepgram_server, vad_model, diane, fault
):
    """(A Deepgram that went silent is not tried again within the call.)"""
    settings, reason = FAULTS[fault]
    for name, value in settings.items():
        setattr(deepgram_server.options, name, value)
    chain = chain_for(deepgram_server, vad_model)
    text, _ = await hear(chain, diane, realtime=fault == "connects then silent")
    assert "diane" in text.lower(), text
    events = [(e.provider, e.reason) for e in chain.fallback_events]
    if fault == "connects then silent":
        assert events == [("stt/deepgram", reason)]
    else:  # a quick failure is tried again after 1 s: Whisper may take that long (loading)
        assert events and set(events) == {("stt/deepgram", reason)}, events
    await chain.aclose()


async def test_words_in_flight_when_deepgram_dies_are_heard_by_the_next_tier(
    deepgram_server, vad_model, diane
):
    """The socket drops half-way through the utterance: the first half ("This is
    Diane") was sent only to Deepgram, and is replayed into Whisper."""
    deepgram_server.options.utterance_bytes = 10 * 32_000  # Deepgram finalises nothing
    chain = chain_for(deepgram_server, vad_model)

    def drop() -> None:
        deepgram_server.options.silent_close = True

    text, _ = await hear(chain, diane, realtime=True, midway=drop)
    assert "diane" in text.lower(), text
    assert chain.fallback_events and chain.fallback_events[0].provider == "stt/deepgram"
    await chain.aclose()


async def test_an_open_breaker_skips_deepgram_without_connecting(deepgram_server, vad_model, diane):
    breaker = CircuitBreaker("stt/deepgram", clock=Clock())
    for _ in range(5):
        breaker.record_failure()
    chain = chain_for(deepgram_server, vad_model, breaker)
    text, _ = await hear(chain, diane)
    assert "diane" in text.lower()
    assert deepgram_server.connections == [] and deepgram_server.rejected == 0
    assert [e.reason for e in chain.fallback_events] == ["breaker_open"]
    await chain.aclose()


@pytest.mark.parametrize("recovers", [True, False], ids=["recovers", "stays down"])
async def test_a_call_goes_back_to_deepgram_between_utterances_once_it_recovers(
    deepgram_server, vad_model, diane, recovers: bool
):
    """Deepgram refuses the call's first connection; Whisper hears the first utterance.
    At its end (1 s after the failure: the backoff's first step) Deepgram is tried again:
    back, it hears the second utterance; still down, Whisper does, and the next try
    waits 2 s. Nothing the caller says is lost either way."""
    deepgram_server.options.status = 503
    deepgram_server.options.fault_count = 1 if recovers else None
    # the loopback finalises every second of speech: the clip's two, and a spare
    deepgram_server.options.transcripts = ["this is diane", "in new jersey", ""]
    chain = chain_for(deepgram_server, vad_model)
    chain.no_result_s = 2.5  # the loopback answers only after 1 s of speech
    text, _ = await hear(chain, np.concatenate([diane, diane]), realtime=True)
    assert text.lower().count("diane") == 2, text
    if recovers:
        assert text.endswith("this is diane in new jersey"), text  # the loopback's words
        assert chain.serving == "deepgram"
        assert [e.reason for e in chain.fallback_events] == ["http_5xx"]
    else:
        assert chain.serving == "local"
        # the start, then one try at the end of each utterance (1 s, then 2 s, had passed)
        assert deepgram_server.rejected == 3
        assert [e.reason for e in chain.fallback_events] == ["http_5xx"] * 3
    await chain.aclose()
