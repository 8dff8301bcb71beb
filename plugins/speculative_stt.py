"""A non-streaming STT (the local Whisper) that starts transcribing when the caller pauses,
not when the pause has lasted long enough to end the turn.

livekit-agents' ``stt.StreamAdapter`` transcribes an utterance once the VAD says it has
ended: Silero must hear 0.55 s of silence, and only then does Whisper start, so the caller
waits for the silence *and* the transcription (about 1.1 s here). This adapter starts
Whisper on the speech so far as soon as :data:`SPECULATE_AFTER_S` of silence has passed;
if the caller speaks again, that guess is dropped (and a new one starts at the next
pause); if the silence lasts, the VAD ends the utterance and the guess, already done or
nearly, is its transcript. The audio the guess left out is the rest of the silence, so the
words are the same.

A guess that is done while the silence lasts is sent at once as a preflight transcript
(livekit's ``PREFLIGHT_TRANSCRIPT``, which Deepgram Flux sends too): livekit drafts the
reply to it, and with ``preemptive_tts`` voices it, while the VAD is still waiting for its
silence; the final transcript at the end of the utterance is the same text, so livekit
keeps the draft. If the caller speaks again, the draft is not used (livekit drafts again
from the next transcript).

The price: a transcription thrown away for each mid-sentence pause longer than
:data:`SPECULATE_AFTER_S` (CPU, never words), and a reply drafted for it when the
transcription finished inside the pause (livekit drafts at most three times a turn).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from livekit import rtc
from livekit.agents import stt, utils, vad
from livekit.agents.stt.stream_adapter import StreamAdapterWrapper
from livekit.agents.types import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectOptions,
    NotGivenOr,
)
from livekit.agents.vad import VADEventType

SPECULATE_AFTER_S = 0.15
"""Silence after speech before the transcription starts on a guess."""


class SpeculativeStreamAdapter(stt.StreamAdapter):
    """``stt.StreamAdapter`` whose streams transcribe at the first pause (see the module)."""

    def __init__(
        self, *, stt: stt.STT, vad: vad.VAD, speculate_after_s: float = SPECULATE_AFTER_S
    ) -> None:
        super().__init__(stt=stt, vad=vad)
        # reports, logs and metrics name the model, as for livekit's own adapter's tiers
        self._label = stt.label
        self.speculate_after_s = speculate_after_s
        self.guesses_used = 0
        """Utterances whose transcript was the guess (stats for tests and benchmarks)."""
        self.guesses_dropped = 0
        """Guesses thrown away because the caller spoke again."""
        self.preflights = 0
        """Guesses sent as preflight transcripts, done before the caller spoke again or
        the utterance ended."""

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> stt.RecognizeStream:
        return _SpeculativeStream(
            self,
            vad=self._vad,
            wrapped_stt=self._stt,
            language=language,
            conn_options=conn_options,
        )


class _SpeculativeStream(StreamAdapterWrapper):
    def __init__(self, adapter: SpeculativeStreamAdapter, **kwargs: object) -> None:
        super().__init__(adapter, **kwargs)  # type: ignore[arg-type]
        self._adapter = adapter

    async def _transcribe(self, frames: list[rtc.AudioFrame]) -> stt.SpeechEvent:
        return await self._wrapped_stt.recognize(
            buffer=utils.merge_frames(frames),
            language=self._language,
            conn_options=self._wrapped_stt_conn_options,
        )

    async def _run(self) -> None:
        vad_stream = self._vad.stream()

        async def forward_input() -> None:
            async for item in self._input_ch:
                if isinstance(item, self._FlushSentinel):
                    vad_stream.flush()
                    continue
                vad_stream.push_frame(item)
            vad_stream.end_input()

        async def recognize() -> None:
            speech: list[rtc.AudioFrame] = []
            speaking = False
            guess: asyncio.Task[stt.SpeechEvent] | None = None

            def drop_guess() -> None:
                nonlocal guess
                if guess is not None:
                    guess.cancel()
                    guess = None
                    self._adapter.guesses_dropped += 1

            def preflight(task: asyncio.Task[stt.SpeechEvent]) -> None:
                """A guess done while the caller is still silent: livekit may draft the
                reply now (see the module)."""
                if task is not guess or not speaking or task.cancelled() or task.exception():
                    return  # dropped, already final, or failed (the final raises it)
                alternatives = task.result().alternatives
                if alternatives and alternatives[0].text:
                    self._adapter.preflights += 1
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
                            alternatives=[alternatives[0]],
                        )
                    )

            try:
                async for event in vad_stream:
                    if event.type == VADEventType.START_OF_SPEECH:
                        drop_guess()
                        speaking, speech = True, list(event.frames)
                        self._event_ch.send_nowait(
                            stt.SpeechEvent(stt.SpeechEventType.START_OF_SPEECH)
                        )
                    elif event.type == VADEventType.INFERENCE_DONE and speaking:
                        speech.extend(event.frames)
                        silence_s = event.raw_accumulated_silence
                        if silence_s == 0.0:
                            drop_guess()  # the caller spoke again
                        elif guess is None and silence_s >= self._adapter.speculate_after_s:
                            guess = asyncio.create_task(self._transcribe(list(speech)))
                            guess.add_done_callback(preflight)
                    elif event.type == VADEventType.END_OF_SPEECH:
                        speaking = False
                        speech_end_time = (
                            time.time() - event.silence_duration - event.inference_duration
                        )
                        self._event_ch.send_nowait(
                            stt.SpeechEvent(
                                type=stt.SpeechEventType.END_OF_SPEECH,
                                speech_end_time=speech_end_time,
                            )
                        )
                        if guess is not None:
                            pending, guess = guess, None
                            self._adapter.guesses_used += 1
                        else:
                            pending = asyncio.create_task(self._transcribe(event.frames))
                        result = await pending
                        if not result.alternatives or not result.alternatives[0].text:
                            continue
                        self._event_ch.send_nowait(
                            stt.SpeechEvent(
                                type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                                alternatives=[result.alternatives[0]],
                                speech_end_time=result.speech_end_time or speech_end_time,
                            )
                        )
            finally:
                speaking = False  # no preflight after the stream's end
                if guess is not None:
                    guess.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await guess

        tasks = [
            asyncio.create_task(forward_input(), name="forward_input"),
            asyncio.create_task(recognize(), name="recognize"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await utils.aio.cancel_and_wait(*tasks)
            await vad_stream.aclose()
