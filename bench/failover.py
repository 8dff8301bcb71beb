"""The caller's extra silence when the cloud LLM or the cloud voice fails: our chains
against livekit's stock ``llm.FallbackAdapter`` and ``tts.FallbackAdapter`` (their
defaults), in the same run.

For each fault the loopback OpenAI server can inject (``tests/loopback``), ``--turns``
requests go to (a) our chain (OpenAI -> dialogue engine -> canned, first-token budget 2 s,
a fresh circuit breaker per turn so every turn meets the fault) and (b) the stock adapter
over the same two tiers. A turn's time is from the request to the first text token the
session would speak, beside the healthy cloud's in the same run. One more line: once the
breaker is open, what a turn costs (no request is made to the failing provider). Then the
same for a sentence's first audio: ElevenLabs (loopback) with each fault, then Piper; ours
with its 1.5 s first-audio budget, stock with its request timeout and retries. Then the
caller's words: a real corpus utterance ("This is Diane in New Jersey.", a phone line)
played in real time to Deepgram (loopback) with each fault, then Whisper; the time from
the end of the caller's speech to its final transcript, ours (3 s no-result budget, the unfinalised
audio replayed) against livekit's stock ``stt.FallbackAdapter``.

Run from the repository root: ``python -m bench.failover [--turns N] [--stages llm,tts,stt]``.
Prints Markdown; the last line is the headline.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from livekit import rtc
from livekit.agents import llm, stt, tts
from livekit.agents.utils import http_context
from livekit.plugins import deepgram, elevenlabs, openai, silero

from agent.profile import builtin_profile, canned_policy, dialogue_policy
from bench.corpus import load_sample_audio
from plugins.circuit_breaker import CircuitBreaker
from plugins.dialogue_llm import DialogueLLM
from plugins.llm_chain import LLMChain
from plugins.local_stt import WhisperSTT
from plugins.local_tts import PiperTTS
from plugins.stt_chain import STTChain
from plugins.tts_chain import TTSChain
from tests.loopback.deepgram_server import DeepgramOptions, DeepgramServer
from tests.loopback.elevenlabs_server import ElevenLabsOptions, ElevenLabsServer
from tests.loopback.openai_server import OpenAIOptions, OpenAIServer

FAULTS: dict[str, dict[str, Any]] = {
    "connection refused": {"refuse": True},
    "HTTP 500": {"status": 500},
    "HTTP 429": {"status": 429},
    "dropped connection": {"silent_close": True},
    "malformed frames": {"garbage": "not_json"},
    "empty reply": {"reply_chunks": []},
    "connects, then silent": {"stall_s": 30.0},
    "no first byte": {"first_byte_delay_s": 30.0},
}
PIPER = PiperTTS()
STOCK_CAP_S = 20.0
"""A stock turn still silent after this is cut off and counted at this value."""


def cloud(server: OpenAIServer) -> llm.LLM:
    return openai.LLM(model="gpt-bench", api_key="sk-bench", base_url=server.base_url)


def ours(server: OpenAIServer, breaker: CircuitBreaker | None = None) -> llm.LLM:
    profile = builtin_profile()
    return LLMChain(
        [
            (cloud(server), breaker or CircuitBreaker("llm/openai")),
            (DialogueLLM(dialogue_policy(profile)), None),
            (DialogueLLM(canned_policy(profile)), None),
        ]
    )


def stock(server: OpenAIServer) -> llm.LLM:
    return llm.FallbackAdapter([cloud(server), DialogueLLM(dialogue_policy(builtin_profile()))])


async def first_token_s(model: llm.LLM, cap_s: float = STOCK_CAP_S) -> float:
    """Seconds from the request to its first text token (``cap_s`` if none came)."""
    ctx = llm.ChatContext.empty()
    ctx.add_message(role="user", content="Hello, is anyone there?")
    started = time.perf_counter()

    async def first() -> float:
        async with model.chat(chat_ctx=ctx) as stream:
            async for chunk in stream:
                if chunk.delta and chunk.delta.content:
                    return time.perf_counter() - started
        return cap_s

    try:
        return await asyncio.wait_for(first(), cap_s)
    except Exception:  # the stock adapter gives up with an error: silence until the cap
        return cap_s
    finally:
        await model.aclose()


async def measure(
    server: OpenAIServer, make: Callable[[OpenAIServer], llm.LLM], turns: int
) -> list[float]:
    return [await first_token_s(make(server)) for _ in range(turns)]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def shown(seconds: float) -> str:
    return "never" if seconds >= STOCK_CAP_S else f"{seconds:.3f}"


def fault_rows(
    rows: list[tuple[str, list[float], list[float]]],
) -> tuple[list[str], float, float, list[str]]:
    """The table rows for (fault, ours, stock) timings, the worst P95 of ours and of
    stock (among the faults stock survived), and the faults stock never answered."""
    lines: list[str] = []
    worst_ours = worst_stock = 0.0
    silent: list[str] = []
    for name, ours_s, stock_s in rows:
        o50, o95, s50, s95 = pct(ours_s, 50), pct(ours_s, 95), pct(stock_s, 50), pct(stock_s, 95)
        worst_ours = max(worst_ours, o95)
        if s95 >= STOCK_CAP_S:
            silent.append(name)
            stock_cells, ratio = f"{shown(s50)} | {shown(s95)}", "-"
        else:
            worst_stock = max(worst_stock, s95)
            stock_cells, ratio = f"{s50:.3f} | {s95:.3f}", f"{s95 / o95:.1f}"
        lines.append(f"| {name} | {o50:.3f} | {o95:.3f} | {stock_cells} | {ratio} |")
    return lines, worst_ours, worst_stock, silent


def set_fault(server: Any, fault: dict[str, Any]) -> None:
    """The server's options as new, with ``fault`` (the server keeps its options object)."""
    fresh = type(server.options)(**fault)
    for field in dataclasses.fields(fresh):
        setattr(server.options, field.name, getattr(fresh, field.name))


async def run_llm(turns: int) -> tuple[str, str]:
    server = OpenAIServer(OpenAIOptions())
    await server.start()
    try:
        healthy = await measure(server, cloud, turns)
        base_s = statistics.median(healthy)
        rows = []
        for name, fault in FAULTS.items():
            set_fault(server, fault)
            ours_s = await measure(server, ours, turns)
            stock_s = await measure(server, stock, turns)
            rows.append((name, ours_s, stock_s))
        # the breaker, once open: every turn skips the provider
        set_fault(server, {"status": 500})
        breaker = CircuitBreaker("llm/openai")
        for _ in range(5):
            await first_token_s(ours(server, breaker))
        before = len(server.chat_requests)
        open_s = [await first_token_s(ours(server, breaker)) for _ in range(turns)]
        asked = len(server.chat_requests) - before
    finally:
        await server.aclose()

    lines = [
        f"Time to the first token the caller would hear, {turns} turns per row; the healthy "
        f"cloud LLM (loopback) takes a median {base_s * 1000:.1f} ms in this run.",
        "",
        "| fault | ours P50 s | ours P95 s | stock P50 s | stock P95 s | stock / ours (P95) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    table, worst_ours, worst_stock, silent = fault_rows(rows)
    lines += table
    lines += [
        "",
        f"Breaker open: {turns} turns, P50 {pct(open_s, 50) * 1000:.1f} ms, P95 "
        f"{pct(open_s, 95) * 1000:.1f} ms to the engine's first token; {asked} requests "
        "reached the failing provider.",
        f"never: no first token within {STOCK_CAP_S:.0f} s (the stock adapter takes an empty "
        "reply as served, so the caller hears nothing that turn).",
    ]
    headline = f"LLM first token ours {worst_ours:.2f} s vs stock {worst_stock:.2f} s" + (
        f" and never on: {', '.join(silent)}" if silent else ""
    )
    return "\n".join(lines), headline


TTS_FAULTS: dict[str, dict[str, Any]] = {
    "connection refused": {"refuse": True},
    "HTTP 500": {"status": 500},
    "HTTP 429": {"status": 429},
    "dropped connection": {"silent_close": True},
    "not audio": {"garbage": "not_json"},
    "connects, then silent": {"stall_s": 30.0},
    "no first byte": {"first_byte_delay_s": 30.0},
}
SENTENCE = "Your router should be back online within the next ten minutes."


def eleven(server: ElevenLabsServer) -> tts.TTS:
    return elevenlabs.TTS(voice_id="bench", api_key="xi-bench", base_url=server.base_url)


def ours_tts(server: ElevenLabsServer, breaker: CircuitBreaker | None = None) -> tts.TTS:
    return TTSChain([(eleven(server), breaker or CircuitBreaker("tts/elevenlabs")), (PIPER, None)])


def stock_tts(server: ElevenLabsServer) -> tts.TTS:
    return tts.FallbackAdapter([eleven(server), PIPER])


async def first_audio_s(model: tts.TTS, cap_s: float = STOCK_CAP_S) -> float:
    """Seconds from the request to the sentence's first audio (``cap_s`` if none came)."""
    started = time.perf_counter()

    async def first() -> float:
        async with model.synthesize(SENTENCE) as stream:
            async for _ in stream:
                return time.perf_counter() - started
        return cap_s

    try:
        return await asyncio.wait_for(first(), cap_s)
    except Exception:
        return cap_s


async def run_tts(turns: int) -> tuple[str, str]:
    server = ElevenLabsServer(ElevenLabsOptions())
    async with http_context.open():
        await server.start()
        try:
            healthy = [await first_audio_s(eleven(server)) for _ in range(turns)]
            local = [await first_audio_s(PIPER) for _ in range(turns)]
            rows = []
            for name, fault in TTS_FAULTS.items():
                set_fault(server, fault)
                ours_s = [await first_audio_s(ours_tts(server)) for _ in range(turns)]
                stock_s = [await first_audio_s(stock_tts(server)) for _ in range(turns)]
                rows.append((name, ours_s, stock_s))
            set_fault(server, {"status": 500})
            breaker = CircuitBreaker("tts/elevenlabs")
            for _ in range(5):
                await first_audio_s(ours_tts(server, breaker))
            before = len(server.http_requests)
            open_s = [await first_audio_s(ours_tts(server, breaker)) for _ in range(turns)]
            asked = len(server.http_requests) - before
        finally:
            await server.aclose()
    lines = [
        f"Time to a sentence's first audio when the cloud voice (ElevenLabs, loopback) fails "
        f"and the local Piper voice takes over, {turns} sentences per row; healthy ElevenLabs "
        f"takes a median {statistics.median(healthy) * 1000:.1f} ms, Piper alone "
        f"{statistics.median(local) * 1000:.1f} ms in this run.",
        "",
        "| fault | ours P50 s | ours P95 s | stock P50 s | stock P95 s | stock / ours (P95) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    table, worst_ours, worst_stock, silent = fault_rows(rows)
    lines += table
    lines += [
        "",
        f"Breaker open: {turns} sentences, P50 {pct(open_s, 50) * 1000:.1f} ms, P95 "
        f"{pct(open_s, 95) * 1000:.1f} ms to Piper's first audio; {asked} requests reached "
        "the failing voice.",
    ]
    headline = f"TTS first audio ours {worst_ours:.2f} s vs stock {worst_stock:.2f} s" + (
        f" and never on: {', '.join(silent)}" if silent else ""
    )
    return "\n".join(lines), headline


STT_FAULTS: dict[str, dict[str, Any]] = {
    "connection refused": {"refuse": True},
    "HTTP 500": {"status": 500},
    "HTTP 429": {"status": 429},
    "connects, then silent": {"stall_s": 60.0},
}
FRAME = 320  # 20 ms at 16 kHz


SPEECH_S = 2.2


def utterance() -> np.ndarray:
    """Corpus: "This is Diane in New Jersey." (a phone line, 2.2 s), then 2 s of quiet."""
    pcm = load_sample_audio()
    speech = pcm[int(12.3 * 16_000) : int((12.3 + SPEECH_S) * 16_000)]
    return np.concatenate([speech, np.zeros(2 * 16_000, np.int16)])


def deepgram_stt(server: DeepgramServer) -> stt.STT:
    return deepgram.STT(api_key="dg-bench", base_url=server.listen_url)


async def final_s(model: stt.STT, pcm: np.ndarray, cap_s: float = STOCK_CAP_S) -> float:
    """Seconds from the end of the speech in ``pcm`` (played in real time) to its first
    non-empty final transcript (``cap_s`` if none came)."""
    stream = model.stream()
    heard = asyncio.Event()
    heard_at = 0.0

    async def read() -> None:
        nonlocal heard_at
        async for ev in stream:
            if ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT and ev.alternatives[0].text:
                heard_at = heard_at or time.perf_counter()
                heard.set()

    reader = asyncio.create_task(read())
    speech_frames = int(SPEECH_S * 16_000) // FRAME
    ended = time.perf_counter()
    try:
        for n, i in enumerate(range(0, len(pcm) - FRAME + 1, FRAME)):
            if n == speech_frames:
                ended = time.perf_counter()
            stream.push_frame(rtc.AudioFrame(pcm[i : i + FRAME].tobytes(), 16_000, 1, FRAME))
            await asyncio.sleep(0.02)
        await asyncio.wait_for(heard.wait(), cap_s)
        return max(0.0, heard_at - ended)
    except Exception:  # silence until the cap, or the stock adapter gave up
        return cap_s
    finally:
        reader.cancel()
        await stream.aclose()


async def run_stt(turns: int) -> tuple[str, str]:
    vad = silero.VAD.load()
    whisper = WhisperSTT()
    pcm = utterance()
    server = DeepgramServer(DeepgramOptions())
    async with http_context.open():
        await server.start()
        try:

            def ours(breaker: CircuitBreaker | None = None) -> stt.STT:
                cloud = (deepgram_stt(server), breaker or CircuitBreaker("stt/deepgram"))
                return STTChain([cloud, (whisper, None)], vad=vad)

            def stock() -> stt.STT:
                return stt.FallbackAdapter([deepgram_stt(server), whisper], vad=vad)

            async def measure_stt(make: Callable[[], stt.STT]) -> list[float]:
                out = []
                for _ in range(turns):
                    server.options.transcripts = ["this is diane", "in new jersey", ""]
                    out.append(await final_s(make(), pcm))
                return out

            healthy = await measure_stt(lambda: deepgram_stt(server))
            local = await measure_stt(lambda: stt.StreamAdapter(stt=whisper, vad=vad))
            rows = []
            for name, fault in STT_FAULTS.items():
                set_fault(server, fault)
                rows.append((name, await measure_stt(ours), await measure_stt(stock)))
        finally:
            await server.aclose()
    lines = [
        f"Time from the end of the caller's speech to its final transcript when Deepgram "
        f"(loopback) fails and Whisper takes over, {turns} utterances per row, in real time; "
        f"healthy Deepgram takes a median {statistics.median(healthy):.3f} s, Whisper alone "
        f"{statistics.median(local):.3f} s in this run.",
        "",
        "| fault | ours P50 s | ours P95 s | stock P50 s | stock P95 s | stock / ours (P95) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    table, worst_ours, worst_stock, silent = fault_rows(rows)
    lines += table
    headline = f"STT final ours {worst_ours:.2f} s vs stock {worst_stock:.2f} s" + (
        f" and never on: {', '.join(silent)}" if silent else ""
    )
    return "\n".join(lines), headline


async def run(turns: int, stages: list[str]) -> str:
    runners = {"llm": run_llm, "tts": run_tts, "stt": run_stt}
    out: list[str] = []
    headlines = []
    for stage in stages:
        table, headline = await runners[stage](turns)
        out += [f"## {stage.upper()}", "", table, ""]
        headlines.append(headline)
    return "\n".join([*out, f"Worst-fault P95: {'; '.join(headlines)}."])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20, help="turns per fault and adapter")
    parser.add_argument(
        "--stages",
        default="llm,tts,stt",
        help="comma-separated stages to measure (llm, tts, stt); the STT runs in real time",
    )
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if not stages or any(s not in ("llm", "tts", "stt") for s in stages):
        parser.error(f"--stages takes llm, tts and stt, not {args.stages!r}")
    if args.turns < 1:
        parser.error("--turns must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    # the loopback's complaints when a client hangs up on a stalled reply (expected here)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    print(asyncio.run(run(args.turns, stages)))


if __name__ == "__main__":
    main()
