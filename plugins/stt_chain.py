"""The STT chain: Deepgram, then the local Whisper.

Built on livekit-agents' ``stt.FallbackAdapter`` (which wraps a non-streaming STT in
``stt.StreamAdapter`` with the VAD, and forwards metrics), with what it lacks for a call:

- a provider that **hears audible speech and says nothing** for ``no_result_s`` has
  failed (livekit notices only an exception or its 10 s attempt timeout; a Deepgram socket
  that stays open and silent would leave the caller unheard for the rest of the call);
- **the caller's words in flight are not lost**: the audio since the last final
  transcript (at most ``replay_s``) is replayed into the next tier, so the utterance the
  failing provider was hearing is transcribed by the next one (livekit's adapter starts
  the next STT on new audio only);
- a **circuit breaker** per cloud provider, shared by every call of the process, and every
  fallback recorded (``plugins.fallback``).

- **a call goes back to a provider that recovers**: while a lower tier serves, the
  failed one is tried again at the end of an utterance (a final transcript, so no words
  are in flight) once 1, 2, 4, then every 8 s have passed since it failed (its breaker
  permitting: an open breaker is not asked), if it failed at once (refused, an HTTP
  error, garbage): such a retry fails at once again, and the audio is replayed into the
  lower tier, so it costs the caller nothing. A tier that went silent is not retried
  within the call (a retry would cost the next utterance the whole budget again).

The chain's stream serves one call for its whole length.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque

import numpy as np
from livekit import rtc
from livekit.agents import APIConnectionError, stt, vad
from livekit.agents.stt.fallback_adapter import FallbackAdapter, FallbackRecognizeStream
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.utils import aio

from plugins.circuit_breaker import CircuitBreaker
from plugins.fallback import FallbackEvent, TierTimeout, classify, record_fallback

NO_RESULT_S = 3.0
"""Deepgram answers audible speech with interim results within about a second (its
streaming cadence; the loopback server's first result comes after 1 s of speech): three
seconds of audible speech without a single result is a dead stream, not a slow one."""
REPLAY_S = 8.0
AUDIBLE_RMS = 300.0
"""A frame louder than this (16-bit RMS, about -40 dBFS) is audible: a provider must
answer it."""
ATTEMPT_TIMEOUT_S = 10.0
RETRY_BACKOFF_S = (1.0, 2.0, 4.0, 8.0)
"""Waits before trying a failed tier again within a call; the last repeats."""
QUICK_FAILURES = frozenset({"connection", "http_5xx", "http_4xx", "rate_limited", "malformed"})
"""Failures a retry meets at once, costing the caller nothing: only after these is a tier
tried again within the call. One that went silent (``no_result``, a timeout) is not: a
retry would cost the next utterance another budget; new calls try it (its breaker)."""


class _Retry(Exception):
    """A better tier is due for another try (raised at an utterance's end)."""


class STTChain(FallbackAdapter):
    """``tiers`` in order of preference, each with its breaker (None: a local tier, which
    has no result budget). Non-streaming tiers are wrapped with ``vad`` (livekit's)."""

    def __init__(
        self,
        tiers: list[tuple[stt.STT, CircuitBreaker | None]],
        *,
        vad: vad.VAD,
        no_result_s: float = NO_RESULT_S,
        replay_s: float = REPLAY_S,
    ) -> None:
        super().__init__(
            [tier for tier, _ in tiers],
            vad=vad,
            attempt_timeout=ATTEMPT_TIMEOUT_S,
            max_retry_per_stt=0,
        )
        self._originals = [tier for tier, _ in tiers]
        self.breakers = [breaker for _, breaker in tiers]
        self.no_result_s = no_result_s
        self.replay_s = replay_s
        self.fallback_events: list[FallbackEvent] = []
        """Every fallback of this chain (one chain per call)."""
        self.serving = ""
        """The provider whose transcripts the call is getting (``deepgram``, ``local``)."""

    @property
    def tiers(self) -> list[stt.STT]:
        return list(self._originals)

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> STTChainStream:
        # the chain is the retry: livekit's own retries would replay every tier
        return STTChainStream(
            chain=self,
            language=language,
            conn_options=dataclasses.replace(conn_options, max_retry=0),
        )

    async def aclose(self) -> None:
        """Close every tier too: the chain is the session's STT, the call closes it."""
        await super().aclose()
        for tier in self._originals:
            await tier.aclose()

    def record_fallback(self, index: int, reason: str) -> None:
        tier, breaker = self._originals[index], self.breakers[index]
        provider = breaker.provider if breaker is not None else f"stt/{tier.provider}"
        record_fallback(self.fallback_events, "stt", provider, reason, model=tier.model)


class STTChainStream(FallbackRecognizeStream):
    def __init__(
        self,
        *,
        chain: STTChain,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=chain, language=language, conn_options=conn_options)
        self._chain = chain
        self._current: stt.RecognizeStream | None = None
        self._unfinalised: deque[rtc.AudioFrame] = deque()
        """The audio since the last final transcript (at most ``replay_s``)."""
        self._unfinalised_s = 0.0
        """Its duration, kept as frames come and go (summing it on every 20 ms frame was
        15 % of a shared worker's CPU: bench.density's profile)."""
        self._unanswered_since: float | None = None
        """When audible audio was first sent that no event has answered yet."""
        self._input_ended = False
        self._retries = 0
        """Failed tries since the call last had its best tier (the backoff's step)."""
        self._retry_at: float | None = None
        """When a better tier than the serving one may be tried again."""

    async def _run(self) -> None:
        chain = self._chain
        forward = asyncio.create_task(self._forward_input(), name="stt-chain-input")
        try:
            while True:
                retrying = self._retry_at is not None
                for index, tier in enumerate(chain._stt_instances):
                    breaker = chain.breakers[index]
                    if breaker is not None and not breaker.allow():
                        if retrying:  # another call holds the probe: back off, quietly
                            self._schedule_retry()
                        else:
                            chain.record_fallback(index, "breaker_open")
                        continue
                    try:
                        await self._listen(index, tier)
                    except _Retry:
                        break  # from the top: the better tiers first
                    except Exception as exc:
                        reason, retry_after_s = classify(exc)
                        if breaker is not None:
                            breaker.record_failure(retry_after_s=retry_after_s)
                        chain.record_fallback(index, reason)
                        if reason in QUICK_FAILURES:
                            self._schedule_retry()
                        else:  # a retry could keep the caller waiting another budget
                            self._retry_at = None
                        continue
                    return
                else:
                    raise APIConnectionError("every STT tier failed")
        finally:
            self._current = None
            await aio.cancel_and_wait(forward)

    def _schedule_retry(self) -> None:
        step = RETRY_BACKOFF_S[min(self._retries, len(RETRY_BACKOFF_S) - 1)]
        self._retries += 1
        self._retry_at = time.monotonic() + step

    def _retry_due(self, index: int) -> bool:
        """Is a better tier than ``index`` due for another try, its breaker permitting?"""
        if self._retry_at is None or time.monotonic() < self._retry_at:
            return False
        better = self._chain.breakers[:index]
        return any(b is None or b.state != "open" for b in better)

    async def _listen(self, index: int, tier: stt.STT) -> None:
        """Relay ``tier``'s events until the input ends; raises when it fails."""
        chain = self._chain
        options = dataclasses.replace(self._conn_options, max_retry=0, timeout=ATTEMPT_TIMEOUT_S)
        stream = tier.stream(language=self._language, conn_options=options)
        stream.start_time_offset = self.start_time_offset + (time.time() - self._start_time)
        for frame in self._unfinalised:  # what the caller said that no tier has finalised
            stream.push_frame(frame)
        if self._input_ended:
            stream.end_input()
        self._unanswered_since = time.monotonic() if self._audible_pending() else None
        self._current = stream
        breaker = chain.breakers[index]
        chain.serving = breaker.provider.removeprefix("stt/") if breaker else tier.provider
        watched = breaker is not None
        succeeded = False
        # a pump, so that the watchdog's timeout cancels a queue read, never the stream's
        events: asyncio.Queue[stt.SpeechEvent | None] = asyncio.Queue()

        async def pump() -> None:
            try:
                async for ev in stream:
                    events.put_nowait(ev)
            finally:
                events.put_nowait(None)

        async with stream:
            pumping = asyncio.create_task(pump(), name="stt-chain-tier")
            try:
                while True:
                    try:
                        ev = await asyncio.wait_for(events.get(), timeout=0.25)
                    except TimeoutError:
                        since = self._unanswered_since
                        late = since is not None and time.monotonic() - since > chain.no_result_s
                        if watched and late:
                            raise TierTimeout("no_result") from None
                        continue
                    if ev is None:
                        pumping.result()  # the tier's failure, if it failed
                        if not succeeded and breaker is not None:
                            breaker.record_success()  # it served to the call's end
                        return
                    self._unanswered_since = None
                    final = ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT
                    if final:
                        self._unfinalised.clear()
                        self._unfinalised_s = 0.0
                        if not succeeded and breaker is not None:
                            breaker.record_success()
                            succeeded = True
                        if index == 0:
                            self._retries, self._retry_at = 0, None
                    self._event_ch.send_nowait(ev)
                    if final and index > 0 and self._retry_due(index):
                        raise _Retry  # between utterances: no words in flight
            finally:
                await aio.cancel_and_wait(pumping)

    def _audible_pending(self) -> bool:
        return any(_rms(frame) >= AUDIBLE_RMS for frame in self._unfinalised)

    async def _forward_input(self) -> None:
        async for data in self._input_ch:
            if isinstance(data, rtc.AudioFrame):
                self._keep(data)
                if self._unanswered_since is None and _rms(data) >= AUDIBLE_RMS:
                    self._unanswered_since = time.monotonic()
            current = self._current
            if current is None:
                continue
            with contextlib.suppress(RuntimeError):  # the tier's stream has just failed
                if isinstance(data, rtc.AudioFrame):
                    current.push_frame(data)
                else:
                    current.flush()
        self._input_ended = True
        if self._current is not None:
            with contextlib.suppress(RuntimeError):
                self._current.end_input()

    def _keep(self, frame: rtc.AudioFrame) -> None:
        self._unfinalised.append(frame)
        self._unfinalised_s += frame.duration
        while self._unfinalised and self._unfinalised_s > self._chain.replay_s:
            self._unfinalised_s -= self._unfinalised.popleft().duration


def _rms(frame: rtc.AudioFrame) -> float:
    pcm = np.frombuffer(frame.data, dtype=np.int16).astype(np.float32)
    return float(np.sqrt(np.mean(pcm * pcm))) if pcm.size else 0.0
