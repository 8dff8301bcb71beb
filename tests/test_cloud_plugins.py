"""The real cloud plugins (Deepgram STT, OpenAI LLM and TTS, ElevenLabs TTS) against loopback
servers that speak the providers' wire protocols: what the plugins send, what they make of
the answers, and which server faults reach the caller as ``APIError`` in bounded time.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import soundfile as sf
from livekit import rtc
from livekit.agents import (
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    llm,
    stt,
)
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT
from livekit.plugins import deepgram, elevenlabs, openai

from tests.loopback import tone
from tests.loopback.deepgram_server import DeepgramServer
from tests.loopback.elevenlabs_server import ElevenLabsServer
from tests.loopback.openai_server import OpenAIServer, ToolCallScript

SAMPLE_WAV = Path(__file__).parent / "data" / "sample.wav"
FRAME_SAMPLES = 320  # 20 ms at 16 kHz
T = TypeVar("T")

NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)
# fault tests: no retries, and a timeout well under the injected delay
FAST_FAIL = APIConnectOptions(max_retry=0, timeout=0.5, retry_interval=0.0)
SLOW_S = 2.0
"""The injected slow first byte / stall: four times FAST_FAIL's timeout."""
FAIL_BOUND_S = 1.5
"""A fault must surface this soon after the plugin's own timeout (or at once)."""


@pytest.fixture(scope="module")
def caller_speech() -> np.ndarray:
    """2.2 s of a real caller (16 kHz mono int16): Diane's "This is Diane in New Jersey"."""
    pcm, rate = sf.read(str(SAMPLE_WAV), dtype="int16")
    assert rate == 16_000
    return pcm[int(12.3 * rate) : int(14.5 * rate)]


def audio_frames(pcm: np.ndarray) -> list[rtc.AudioFrame]:
    """``pcm`` cut into 20 ms frames (the last one dropped if short)."""
    return [
        rtc.AudioFrame(pcm[i : i + FRAME_SAMPLES].tobytes(), 16_000, 1, FRAME_SAMPLES)
        for i in range(0, len(pcm) - FRAME_SAMPLES + 1, FRAME_SAMPLES)
    ]


async def bounded(awaitable: Awaitable[T], seconds: float = 10.0) -> T:
    """Await with a hard limit, so a plugin that hangs fails the test instead of the suite."""
    return await asyncio.wait_for(awaitable, timeout=seconds)


async def wait_until(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def events_until(
    stream: stt.SpeechStream, last: stt.SpeechEventType
) -> list[stt.SpeechEvent]:
    """Speech events up to and including the first of type ``last``, usage events left out."""
    seen: list[stt.SpeechEvent] = []
    async for ev in stream:
        if ev.type == stt.SpeechEventType.RECOGNITION_USAGE:
            continue
        seen.append(ev)
        if ev.type == last:
            return seen
    raise AssertionError(f"stream ended before {last}: {[e.type for e in seen]}")


# -- Deepgram -------------------------------------------------------------------------------


async def test_deepgram_streams_interim_and_final_transcripts(
    deepgram_server: DeepgramServer, caller_speech: np.ndarray, job_http_session: None
) -> None:
    deepgram_server.options.transcripts = ["my internet is down in springfield"]
    deepgram_server.options.confidence = 0.93
    stt_model = deepgram.STT(api_key="test", base_url=deepgram_server.listen_url)
    stream = stt_model.stream()
    try:
        for frame in audio_frames(caller_speech):
            stream.push_frame(frame)
        events = await bounded(events_until(stream, stt.SpeechEventType.END_OF_SPEECH))

        types = [ev.type for ev in events]
        assert types == [
            stt.SpeechEventType.START_OF_SPEECH,
            stt.SpeechEventType.INTERIM_TRANSCRIPT,
            stt.SpeechEventType.FINAL_TRANSCRIPT,
            stt.SpeechEventType.END_OF_SPEECH,
        ]
        interim, final = events[1].alternatives[0], events[2].alternatives[0]
        assert interim.text == "my internet is"
        assert final.text == "my internet is down in springfield"
        assert final.confidence == pytest.approx(0.93)
        assert [str(w) for w in final.words or []] == final.text.split()
        assert 0.0 <= final.start_time < final.end_time

        stream.end_input()
        # end_input flushes (Finalize) and says goodbye (CloseStream); the server then closes
        conn = deepgram_server.connections[0]
        await wait_until(lambda: "CloseStream" in conn.control)
    finally:
        await stream.aclose()
        await stt_model.aclose()

    assert conn.authorization == "Token test"
    assert conn.query["encoding"] == "linear16"
    assert conn.query["sample_rate"] == "16000"
    assert conn.query["interim_results"] == "true"
    assert conn.query["model"] == "nova-3"
    assert conn.control[0] == "KeepAlive"
    assert conn.control[-2:] == ["Finalize", "CloseStream"]
    # all of the caller's audio, in the plugin's 50 ms chunks (the ragged tail padded)
    assert conn.audio_bytes >= len(caller_speech) * 2
    assert conn.audio_bytes - len(caller_speech) * 2 < 1600


async def test_deepgram_finalize_returns_the_pending_utterance(
    deepgram_server: DeepgramServer, caller_speech: np.ndarray, job_http_session: None
) -> None:
    deepgram_server.options.transcripts = ["this is diane in new jersey"]
    deepgram_server.options.utterance_bytes = 10 * 32_000  # never reached by 2.2 s of speech
    stt_model = deepgram.STT(api_key="test", base_url=deepgram_server.listen_url)
    stream = stt_model.stream()
    try:
        for frame in audio_frames(caller_speech[:16_000]):
            stream.push_frame(frame)
        await bounded(events_until(stream, stt.SpeechEventType.START_OF_SPEECH))
        stream.flush()  # the plugin's flush is Deepgram's Finalize
        events = await bounded(events_until(stream, stt.SpeechEventType.END_OF_SPEECH))
    finally:
        await stream.aclose()
        await stt_model.aclose()

    finals = [ev for ev in events if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT]
    assert [ev.alternatives[0].text for ev in finals] == ["this is diane in new jersey"]
    conn = deepgram_server.connections[0]
    assert "Finalize" in conn.control
    results = [m for m in conn.sent if m["type"] == "Results"]
    assert results[-1]["from_finalize"] is True


async def test_deepgram_endpointing_finalizes_after_the_silence(
    deepgram_server: DeepgramServer, caller_speech: np.ndarray, job_http_session: None
) -> None:
    """``final_after_silence_s``: the final comes once the speech has been followed by that
    much silence (the loopback's endpointing, as bench.latency uses it), not before."""
    deepgram_server.options.transcripts = ["this is diane in new jersey"]
    deepgram_server.options.final_after_silence_s = 0.3
    stt_model = deepgram.STT(api_key="test", base_url=deepgram_server.listen_url)
    stream = stt_model.stream()
    quiet = np.zeros(FRAME_SAMPLES, dtype=np.int16)
    try:
        for frame in audio_frames(caller_speech):
            stream.push_frame(frame)
        await bounded(events_until(stream, stt.SpeechEventType.START_OF_SPEECH))
        await asyncio.sleep(0.3)
        conn = deepgram_server.connections[0]
        assert conn.finals == [], "a final before any silence"
        for _ in range(20):  # 20 x 20 ms = 0.4 s of silence
            stream.push_frame(rtc.AudioFrame(quiet.tobytes(), 16_000, 1, FRAME_SAMPLES))
        events = await bounded(events_until(stream, stt.SpeechEventType.FINAL_TRANSCRIPT))
    finally:
        await stream.aclose()
        await stt_model.aclose()
    assert events[-1].alternatives[0].text == "this is diane in new jersey"
    assert conn.finals == ["this is diane in new jersey"]


async def test_deepgram_stream_survives_garbage_frames(
    deepgram_server: DeepgramServer, caller_speech: np.ndarray, job_http_session: None
) -> None:
    """Garbage from Deepgram is logged and dropped: no error, and later results still land."""
    opts = deepgram_server.options
    opts.transcripts = ["lost in the noise"]
    opts.utterance_bytes = 16_000  # 0.5 s of speech per utterance
    opts.garbage = "not_json"
    stt_model = deepgram.STT(api_key="test", base_url=deepgram_server.listen_url)
    stream = stt_model.stream()
    try:
        half = len(caller_speech) // 2
        for frame in audio_frames(caller_speech[:half]):
            stream.push_frame(frame)
        await wait_until(lambda: bool(deepgram_server.connections))
        conn = deepgram_server.connections[0]
        await wait_until(lambda: conn.finals == ["lost in the noise"])
        opts.garbage = None
        opts.transcripts = ["heard after the noise"]
        for frame in audio_frames(caller_speech[half:]):
            stream.push_frame(frame)
        events = await bounded(events_until(stream, stt.SpeechEventType.FINAL_TRANSCRIPT))
    finally:
        await stream.aclose()
        await stt_model.aclose()

    texts = [ev.alternatives[0].text for ev in events if ev.alternatives]
    assert texts[-1] == "heard after the noise"
    assert "lost in the noise" not in texts
    assert conn.finals == ["lost in the noise", "heard after the noise"]


# -- OpenAI chat completions ----------------------------------------------------------------


@llm.function_tool
async def check_outage(area: str) -> str:
    """Check whether there is a known service outage in an area.

    Args:
        area: The caller's town name or five-digit ZIP code.
    """
    return f"There is an outage in {area}."


def user_turn(text: str) -> llm.ChatContext:
    ctx = llm.ChatContext()
    ctx.add_message(role="system", content="You are a phone support agent.")
    ctx.add_message(role="user", content=text)
    return ctx


async def chat_chunks(
    model: llm.LLM,
    ctx: llm.ChatContext,
    *,
    tools: list[Any] | None = None,
    conn_options: APIConnectOptions = NO_RETRY,
) -> list[llm.ChatChunk]:
    async def run() -> list[llm.ChatChunk]:
        async with model.chat(chat_ctx=ctx, tools=tools or [], conn_options=conn_options) as s:
            return [chunk async for chunk in s]

    return await bounded(run())


async def test_openai_llm_streams_text_and_reports_usage(openai_server: OpenAIServer) -> None:
    openai_server.options.reply_chunks = ["Yes,", " I can", " help."]
    openai_server.options.prompt_tokens = 42
    openai_server.options.completion_tokens = 7
    model = openai.LLM(model="gpt-4.1-mini", base_url=openai_server.base_url, api_key="test")
    try:
        chunks = await chat_chunks(model, user_turn("Can you help me?"))
    finally:
        await model.aclose()

    text = "".join(c.delta.content or "" for c in chunks if c.delta)
    assert text == "Yes, I can help."
    usages = [c.usage for c in chunks if c.usage is not None]
    assert len(usages) == 1 and chunks[-1].usage is usages[0]
    assert (usages[0].prompt_tokens, usages[0].completion_tokens) == (42, 7)
    assert usages[0].total_tokens == 49

    (request,) = openai_server.chat_requests
    assert request["model"] == "gpt-4.1-mini"
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}
    assert request["messages"][-1] == {"role": "user", "content": "Can you help me?"}


async def test_openai_llm_tool_call_then_answer_with_its_output(
    openai_server: OpenAIServer,
) -> None:
    openai_server.options.tool_call = ToolCallScript("check_outage", {"area": "Springfield"})
    openai_server.options.reply_chunks = ["There is an outage", " in Springfield."]
    model = openai.LLM(model="gpt-4.1-mini", base_url=openai_server.base_url, api_key="test")
    ctx = user_turn("My internet is down in Springfield.")
    try:
        first = await chat_chunks(model, ctx, tools=[check_outage])
        calls = [tc for c in first if c.delta for tc in c.delta.tool_calls]
        assert len(calls) == 1
        call = calls[0]
        assert call.name == "check_outage"
        assert json.loads(call.arguments) == {"area": "Springfield"}
        assert call.call_id
        assert any(c.usage is not None and c.usage.completion_tokens > 0 for c in first)

        ctx.insert(llm.FunctionCall(call_id=call.call_id, name=call.name, arguments=call.arguments))
        ctx.insert(
            llm.FunctionCallOutput(
                call_id=call.call_id,
                name=call.name,
                output="Yes, there is an outage in Springfield.",
                is_error=False,
            )
        )
        second = await chat_chunks(model, ctx, tools=[check_outage])
    finally:
        await model.aclose()

    assert "".join(c.delta.content or "" for c in second if c.delta) == (
        "There is an outage in Springfield."
    )
    assert not [tc for c in second if c.delta for tc in c.delta.tool_calls]
    first_req, second_req = openai_server.chat_requests
    assert [t["function"]["name"] for t in first_req["tools"]] == ["check_outage"]
    assert second_req["messages"][-1] == {
        "role": "tool",
        "tool_call_id": call.call_id,
        "content": "Yes, there is an outage in Springfield.",
    }
    assert openai_server.tool_outputs() == ["Yes, there is an outage in Springfield."]


# -- OpenAI speech --------------------------------------------------------------------------


async def synthesize_frames(
    tts_model: Any, text: str, conn_options: APIConnectOptions
) -> list[rtc.AudioFrame]:
    async def run() -> list[rtc.AudioFrame]:
        async with tts_model.synthesize(text, conn_options=conn_options) as s:
            return [ev.frame async for ev in s]

    return await bounded(run())


def assert_is_then_silence(audio: bytes, expected: bytes, *, sample_rate: int) -> None:
    """``audio`` is ``expected`` plus at most 10 ms of silence (the emitter's end marker)."""
    assert audio[: len(expected)] == expected
    tail = np.frombuffer(audio[len(expected) :], dtype=np.int16)
    assert len(tail) <= sample_rate // 100
    assert not tail.any()


@pytest.mark.parametrize("sse", [False, True], ids=["audio-pcm-body", "sse-events"])
async def test_openai_tts_returns_the_servers_samples(
    openai_server: OpenAIServer, sse: bool
) -> None:
    openai_server.options.honor_sse_speech = sse
    text = "Your service should be back by one o'clock."
    tts_model = openai.TTS(
        base_url=openai_server.base_url, api_key="test", response_format="pcm", voice="alloy"
    )
    try:
        frames = await synthesize_frames(tts_model, text, NO_RETRY)
    finally:
        await tts_model.aclose()

    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24_000, 1)}
    audio = b"".join(bytes(f.data) for f in frames)
    assert_is_then_silence(audio, openai_server.speech_pcm(text), sample_rate=24_000)
    (request,) = openai_server.speech_requests
    assert (request["input"], request["voice"], request["response_format"]) == (
        text,
        "alloy",
        "pcm",
    )
    assert request["stream_format"] == "sse"  # the plugin asks gpt-4o-mini-tts for events


# -- ElevenLabs ------------------------------------------------------------------------------


async def stream_speech(
    tts_model: elevenlabs.TTS, pieces: list[str], conn_options: APIConnectOptions
) -> list[rtc.AudioFrame]:
    """Push ``pieces`` of text as an LLM would, end the input, collect the audio."""

    async def run() -> list[rtc.AudioFrame]:
        async with tts_model.stream(conn_options=conn_options) as s:
            for piece in pieces:
                s.push_text(piece)
            s.end_input()
            return [ev.frame async for ev in s]

    return await bounded(run())


async def test_elevenlabs_streams_pcm_for_pushed_text(
    elevenlabs_server: ElevenLabsServer, job_http_session: None
) -> None:
    pieces = ["Yes, there is ", "an outage in ", "Springfield. ", "It should be fixed ", "soon."]
    text = "".join(pieces)
    tts_model = elevenlabs.TTS(
        api_key="test", base_url=elevenlabs_server.base_url, encoding="pcm_24000", voice_id="v1"
    )
    try:
        frames = await stream_speech(tts_model, pieces, NO_RETRY)
    finally:
        await tts_model.aclose()

    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24_000, 1)}
    audio = b"".join(bytes(f.data) for f in frames)
    # one continuous tone across the context's flushes, every byte the server sent
    assert audio == tone(len(audio) // 2, 24_000).tobytes()
    assert len(audio) == sum(ctx.audio_bytes for ctx in elevenlabs_server.contexts)
    seconds = len(audio) / 2 / 24_000
    assert seconds == pytest.approx(len(text.replace(" ", "")) * 0.030, rel=0.25)

    (conn,) = elevenlabs_server.connections
    assert (conn.voice_id, conn.api_key) == ("v1", "test")
    assert conn.query["output_format"] == "pcm_24000"
    assert conn.query["sync_alignment"] == "true"
    assert elevenlabs_server.texts == [" ".join(text.split())]
    (ctx,) = elevenlabs_server.contexts
    assert ctx.closed and ctx.flushes >= 1
    assert conn.messages[0] == {"text": " ", "voice_settings": {}, "context_id": ctx.context_id}
    # the alignment came back as timed words
    words = [w for f in frames for w in f.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])]
    assert "".join(str(w) for w in words).split() == text.split()


async def test_elevenlabs_default_mp3_decodes_to_the_tone(
    elevenlabs_server: ElevenLabsServer, job_http_session: None
) -> None:
    text = "Thanks for calling. How can I help you today?"
    tts_model = elevenlabs.TTS(api_key="test", base_url=elevenlabs_server.base_url)
    try:
        frames = await stream_speech(tts_model, [text], NO_RETRY)
    finally:
        await tts_model.aclose()

    assert elevenlabs_server.connections[0].query["output_format"] == "mp3_22050_32"
    assert {f.sample_rate for f in frames} == {22_050}
    pcm = np.frombuffer(b"".join(bytes(f.data) for f in frames), dtype=np.int16)
    seconds = len(pcm) / 22_050
    # LAME pads the start and the last frame; the length still follows the text
    assert seconds == pytest.approx(len(text.strip()) * 0.030, abs=0.15)
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    peak_hz = np.argmax(spectrum) * 22_050 / len(pcm)
    assert peak_hz == pytest.approx(440.0, abs=5.0)


# -- faults -----------------------------------------------------------------------------------

# (fault settings, the error the plugin raises). Observed behaviour of the 1.8.9 plugins;
# faults a plugin does NOT surface are listed in the module's report, not here.
DEEPGRAM_FAULTS = {
    "http-503": ({"status": 503}, APIStatusError),
    "refused": ({"refuse": True}, APIConnectionError),
    "silent-close": ({"silent_close": True}, APIStatusError),
    "slow-handshake": ({"first_byte_delay_s": SLOW_S}, APIConnectionError),
}
OPENAI_LLM_FAULTS = {
    "http-503": ({"status": 503}, APIStatusError),
    "refused": ({"refuse": True}, APIConnectionError),
    "silent-close": ({"silent_close": True}, APIConnectionError),
    "not-json": ({"garbage": "not_json"}, APIConnectionError),
    "wrong-schema": ({"garbage": "wrong_schema"}, APIConnectionError),
    "slow-first-byte": ({"first_byte_delay_s": SLOW_S}, APITimeoutError),
    "stall-after-headers": ({"stall_s": SLOW_S}, APITimeoutError),
}
OPENAI_TTS_FAULTS = {
    "http-503": ({"status": 503}, APIStatusError),
    "refused": ({"refuse": True}, APIConnectionError),
    "silent-close": ({"silent_close": True}, APIConnectionError),
    # only in SSE mode: an audio/pcm body is taken as audio whatever it holds
    "sse-not-json": ({"garbage": "not_json", "honor_sse_speech": True}, APIError),
}
ELEVENLABS_FAULTS = {
    "http-503": ({"status": 503}, APIStatusError),
    "refused": ({"refuse": True}, APIConnectionError),
    "silent-close": ({"silent_close": True}, APIStatusError),
    "not-json": ({"garbage": "not_json"}, APIStatusError),
    "wrong-schema": ({"garbage": "wrong_schema"}, APIStatusError),
    "slow-handshake": ({"first_byte_delay_s": SLOW_S}, APITimeoutError),
    # the context's timeout fires, but reaches the caller wrapped as "Could not synthesize"
    "stall-before-audio": ({"stall_s": SLOW_S}, APIStatusError),
}


def apply_faults(options: object, faults: dict[str, Any]) -> None:
    for name, value in faults.items():
        assert hasattr(options, name), name
        setattr(options, name, value)


async def expect_api_error(
    run: Callable[[], Awaitable[object]], expected: type[APIError]
) -> APIError:
    """Run ``run`` and return the APIError it raised, checking type and promptness."""
    t0 = time.monotonic()
    with pytest.raises(APIError) as info:
        await bounded(run(), FAST_FAIL.timeout + FAIL_BOUND_S + 1.0)
    elapsed = time.monotonic() - t0
    assert isinstance(info.value, expected), repr(info.value)
    assert elapsed < FAST_FAIL.timeout + FAIL_BOUND_S, f"took {elapsed:.2f} s"
    return info.value


@pytest.mark.parametrize(("faults", "expected"), DEEPGRAM_FAULTS.values(), ids=DEEPGRAM_FAULTS)
async def test_deepgram_fault_surfaces_as_api_error(
    deepgram_server: DeepgramServer,
    caller_speech: np.ndarray,
    job_http_session: None,
    faults: dict[str, Any],
    expected: type[APIError],
) -> None:
    apply_faults(deepgram_server.options, faults)
    stt_model = deepgram.STT(api_key="test", base_url=deepgram_server.listen_url)
    stream = stt_model.stream(conn_options=FAST_FAIL)

    async def run() -> None:
        for frame in audio_frames(caller_speech):
            stream.push_frame(frame)
        async for _ in stream:
            pass

    try:
        err = await expect_api_error(run, expected)
    finally:
        await stream.aclose()
        await stt_model.aclose()
    if "status" in faults:
        assert isinstance(err, APIStatusError) and err.status_code == 503


@pytest.mark.parametrize(("faults", "expected"), OPENAI_LLM_FAULTS.values(), ids=OPENAI_LLM_FAULTS)
async def test_openai_llm_fault_surfaces_as_api_error(
    openai_server: OpenAIServer, faults: dict[str, Any], expected: type[APIError]
) -> None:
    apply_faults(openai_server.options, faults)
    model = openai.LLM(model="gpt-4.1-mini", base_url=openai_server.base_url, api_key="test")
    try:
        err = await expect_api_error(
            lambda: chat_chunks(model, user_turn("Hello?"), conn_options=FAST_FAIL), expected
        )
    finally:
        await model.aclose()
    if "status" in faults:
        assert isinstance(err, APIStatusError) and err.status_code == 503


@pytest.mark.parametrize(("faults", "expected"), OPENAI_TTS_FAULTS.values(), ids=OPENAI_TTS_FAULTS)
async def test_openai_tts_fault_surfaces_as_api_error(
    openai_server: OpenAIServer, faults: dict[str, Any], expected: type[APIError]
) -> None:
    apply_faults(openai_server.options, faults)
    tts_model = openai.TTS(base_url=openai_server.base_url, api_key="test", response_format="pcm")
    try:
        await expect_api_error(
            lambda: synthesize_frames(tts_model, "Hello there.", FAST_FAIL), expected
        )
    finally:
        await tts_model.aclose()


@pytest.mark.parametrize(("faults", "expected"), ELEVENLABS_FAULTS.values(), ids=ELEVENLABS_FAULTS)
async def test_elevenlabs_fault_surfaces_as_api_error(
    elevenlabs_server: ElevenLabsServer,
    job_http_session: None,
    faults: dict[str, Any],
    expected: type[APIError],
) -> None:
    apply_faults(elevenlabs_server.options, faults)
    tts_model = elevenlabs.TTS(
        api_key="test", base_url=elevenlabs_server.base_url, encoding="pcm_24000"
    )
    try:
        err = await expect_api_error(
            lambda: stream_speech(tts_model, ["Hello there."], FAST_FAIL), expected
        )
    finally:
        await tts_model.aclose()
    if "status" in faults:
        assert isinstance(err, APIStatusError) and err.status_code == 503


async def test_fault_count_lets_a_retry_through(openai_server: OpenAIServer) -> None:
    """With ``fault_count=1`` only the first request fails, so the plugin's retry succeeds."""
    openai_server.options.status = 503
    openai_server.options.fault_count = 1
    model = openai.LLM(model="gpt-4.1-mini", base_url=openai_server.base_url, api_key="test")
    try:
        chunks = await chat_chunks(
            model,
            user_turn("Hello?"),
            conn_options=APIConnectOptions(max_retry=1, retry_interval=0.0, timeout=2.0),
        )
    finally:
        await model.aclose()
    assert "".join(c.delta.content or "" for c in chunks if c.delta) == "Hello from loopback."
    assert len(openai_server.chat_requests) == 2
