"""The TTS chain: cloud voices, then the local voice, then pre-rendered phrases.

Built on livekit-agents' ``tts.FallbackAdapter`` (tier bookkeeping, metrics forwarding,
availability events), with what it lacks for a phone call:

- a **first-audio budget**: a tier that connects and then sends no audio within
  ``first_audio_s`` has failed, and so has one that stops sending for ``stall_s`` in the
  middle of a sentence (livekit's adapter waits for the whole request timeout, and has no
  per-attempt timeout at all since 1.1.0);
- a tier that finishes a sentence **without any audio** has failed (livekit raises "no
  audio frames were pushed" only after the attempt, and pipecat deadlocked on it);
- **a sentence that dies half-way is finished by the next tier from the word where the
  caller stopped hearing it**: the audio already pushed is what the caller hears, and the
  chain turns its duration into characters at the tier's own speaking rate (measured on
  its earlier sentences in this call; 15 characters a second until then). The word cut in
  the middle is said again; nothing before it is repeated and nothing after it skipped.
  livekit's adapter drops the rest of the sentence once any audio was pushed;
- a **circuit breaker** per cloud provider, shared by every call of the process;
- every fallback recorded (``plugins.fallback``).

The chain synthesizes one piece of text at a time; its ``stream()`` is livekit's
``tts.StreamAdapter`` over that, cutting the LLM's text with ``plugins.speech_chunks``
(sentence ends, and clause boundaries past ~40 characters), so the first clause is spoken
while the LLM is still writing the rest. Every tier's
audio is resampled to the chain's rate by livekit's ``rtc.AudioResampler`` (the SoX
resampler, soxr, inside livekit's FFI).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from livekit import rtc
from livekit.agents import APIConnectionError, tts, utils
from livekit.agents.tts.fallback_adapter import FallbackAdapter, FallbackChunkedStream
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from plugins.circuit_breaker import CircuitBreaker
from plugins.fallback import FallbackEvent, TierSilent, TierTimeout, classify, record_fallback
from plugins.speech_chunks import SpeechChunker

FIRST_AUDIO_S = 1.5
STALL_S = 1.5
ATTEMPT_TIMEOUT_S = 15.0
DEFAULT_CHARS_PER_S = 15.0
"""A speaking rate for a tier that has not finished a sentence yet (English speech runs
at roughly 13-17 characters a second)."""


class TTSChain(FallbackAdapter):
    """``tiers`` in order of preference, each with its breaker (None: a local tier, which
    has no first-audio budget: it depends on nothing that can go away, and the tier after
    it can only say fixed phrases)."""

    def __init__(
        self,
        tiers: list[tuple[tts.TTS, CircuitBreaker | None]],
        *,
        first_audio_s: float = FIRST_AUDIO_S,
        stall_s: float = STALL_S,
        sample_rate: int | None = None,
    ) -> None:
        super().__init__([tier for tier, _ in tiers], max_retry_per_tts=0, sample_rate=sample_rate)
        # streaming as the session sees it: livekit's StreamAdapter over ``synthesize``
        self._capabilities = tts.TTSCapabilities(streaming=True, aligned_transcript=True)
        self._pieces = tts.StreamAdapter(tts=self, sentence_tokenizer=SpeechChunker())
        self.breakers = [breaker for _, breaker in tiers]
        self.first_audio_s = first_audio_s
        self.stall_s = stall_s
        self.fallback_events: list[FallbackEvent] = []
        """Every fallback of this chain (one chain per call)."""
        self._spoken: list[tuple[int, float]] = [(0, 0.0) for _ in tiers]
        """Per tier: characters and seconds of the sentences it finished (its rate)."""

    @property
    def tiers(self) -> list[tts.TTS]:
        return list(self._tts_instances)

    def chars_per_s(self, index: int) -> float:
        chars, seconds = self._spoken[index]
        return chars / seconds if chars and seconds > 0 else DEFAULT_CHARS_PER_S

    def _finished(self, index: int, text: str, seconds: float) -> None:
        chars, total = self._spoken[index]
        self._spoken[index] = (chars + len(text), total + seconds)

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> TTSChainStream:
        # the chain is the retry: livekit's own retries would replay every tier
        return TTSChainStream(
            chain=self, input_text=text, conn_options=dataclasses.replace(conn_options, max_retry=0)
        )

    def stream(  # type: ignore[override]  # livekit's adapter's stream, not a FallbackSynthesizeStream
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.SynthesizeStream:
        """The LLM's text in, cut into pieces (``plugins.speech_chunks``), each spoken by
        ``synthesize``."""
        return self._pieces.stream(conn_options=conn_options)

    async def aclose(self) -> None:
        """Close every tier (livekit's adapter only lets go of their events): the chain is
        the session's TTS, and the call closes it at its end."""
        await super().aclose()
        for tier in self._tts_instances:
            await tier.aclose()

    def record_fallback(self, index: int, reason: str) -> None:
        tier, breaker = self._tts_instances[index], self.breakers[index]
        provider = breaker.provider if breaker is not None else f"tts/{tier.provider}"
        record_fallback(self.fallback_events, "tts", provider, reason, model=tier.model)


class _TierFailed(Exception):
    def __init__(self, cause: BaseException, heard_s: float) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.heard_s = heard_s


class TTSChainStream(FallbackChunkedStream):
    def __init__(
        self, *, chain: TTSChain, input_text: str, conn_options: APIConnectOptions
    ) -> None:
        super().__init__(tts=chain, input_text=input_text, conn_options=conn_options)
        self._chain = chain

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        chain = self._chain
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=chain.sample_rate,
            num_channels=chain.num_channels,
            mime_type="audio/pcm",
        )
        remaining = self._input_text
        for index, breaker in enumerate(chain.breakers):
            if breaker is not None and not breaker.allow():
                chain.record_fallback(index, "breaker_open")
                continue
            try:
                seconds = await self._speak(index, remaining, output_emitter)
            except _TierFailed as failed:
                reason, retry_after_s = classify(failed.cause)
                if breaker is not None:
                    breaker.record_failure(retry_after_s=retry_after_s)
                chain.record_fallback(index, reason)
                remaining = unheard_rest(remaining, failed.heard_s * chain.chars_per_s(index))
                if not remaining:
                    output_emitter.flush()
                    return
                continue
            if breaker is not None:
                breaker.record_success()
            chain._finished(index, remaining, seconds)
            output_emitter.flush()
            return
        raise APIConnectionError("every TTS tier failed")

    async def _speak(self, index: int, text: str, output_emitter: tts.AudioEmitter) -> float:
        """Push ``text`` spoken by tier ``index`` (resampled to the chain's rate); returns
        the seconds pushed. Raises ``_TierFailed`` with the seconds pushed before it."""
        chain = self._chain
        tier = chain.tiers[index]
        budget = chain.first_audio_s if chain.breakers[index] is not None else None
        resampler = (
            rtc.AudioResampler(input_rate=tier.sample_rate, output_rate=chain.sample_rate)
            if tier.sample_rate != chain.sample_rate
            else None
        )
        pushed_s = 0.0

        def push(frame: rtc.AudioFrame) -> None:
            nonlocal pushed_s
            pushed_s += frame.duration
            output_emitter.push(frame.data.tobytes())

        options = dataclasses.replace(self._conn_options, max_retry=0, timeout=ATTEMPT_TIMEOUT_S)
        stream = tier.synthesize(text, conn_options=options)
        try:
            async with stream:
                async for frame in _frames(stream, budget, chain.stall_s if budget else None):
                    for out in resampler.push(frame) if resampler else [frame]:
                        push(out)
                if resampler is not None:
                    for out in resampler.flush():
                        push(out)
        except Exception as exc:
            raise _TierFailed(exc, pushed_s) from exc
        if pushed_s <= 0.0 and text.strip():
            raise _TierFailed(TierSilent("no_audio"), 0.0)
        return pushed_s


async def _frames(
    stream: tts.ChunkedStream, first_s: float | None, stall_s: float | None
) -> AsyncIterator[rtc.AudioFrame]:
    """The stream's frames; ``TierTimeout`` when the first takes longer than ``first_s``
    or a later one longer than ``stall_s`` (None: no bound)."""
    events = aiter(stream)
    first = True
    while True:
        try:
            event = await asyncio.wait_for(anext(events), first_s if first else stall_s)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise TierTimeout("first_audio_timeout" if first else "stalled") from None
        first = False
        yield event.frame


def unheard_rest(text: str, heard_chars: float) -> str:
    """What is left of ``text`` for the next tier when the caller heard about
    ``heard_chars`` characters of it: from the start of the word being spoken at that
    point (that word is said again), or all of ``text`` when nothing was heard."""
    n = int(heard_chars)
    if n <= 0:
        return text.strip()
    if n >= len(text):
        return ""
    cut = text.rfind(" ", 0, n + 1)
    return text[cut + 1 :].strip() if cut >= 0 else text.strip()
