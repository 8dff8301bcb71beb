"""The agent's own voice taken out of the caller's channel.

A phone line has no echo canceller on our side: the agent's voice comes back (the far
end's hybrid, a speakerphone) 10-20 dB down and a few hundred milliseconds late, and
without this the VAD takes it for the caller barging in, the agent stops, the echo stops,
the agent resumes, and the STT transcribes the agent's own words as the caller's turn.

WebRTC's echo canceller (AEC3, in livekit's FFI as ``rtc.AudioProcessingModule``) does the
work; this module feeds it: the agent's audio, at the pace it is *played* (frames reach
the output faster than real time, so they are queued and drawn 10 ms per 10 ms of caller
audio; a pause draws silence, a cleared buffer drops what was queued), as the reverse
stream, and the caller's audio in 10 ms pieces as the stream it cleans. AEC3 estimates the
line's delay itself. Mono audio only (a stereo caller passes through untouched).

AEC3 also damps the caller while the agent talks (its suppressor cannot tell double talk
from echo at once), which delays barge-in. So the cleaned audio is used only on a line
that echoes: during the first ``DECIDE_S`` of the agent's voice (cleaned audio while the
agent is heard, raw while it is silent) the canceller compares what it removed with what
came in; a line where it removed 10 dB or more of an audible signal echoes (for the rest
of the call), any other line gets its raw audio from then on, and barge-in keeps its full
speed.

``tests/test_echo.py`` holds it: an echo 10 dB down and 100 ms late comes out more than
30 dB further down after 2 s; a line without echo is passed through sample for sample
once judged.
"""

from __future__ import annotations

import logging

import numpy as np
from livekit import rtc
from livekit.agents.voice.io import AudioInput, AudioOutput, AudioOutputCapabilities

log = logging.getLogger("agent.echo")

DECIDE_S = 0.6
"""Seconds of the agent's voice after which the call decides whether its line echoes."""
ECHO_FLOOR = 100.0
"""16-bit RMS (about -50 dBFS) the caller's channel must reach while the agent speaks for
what the canceller removes to count as an echo rather than line noise."""
ECHO_REMOVED_DB = 10.0


class EchoCanceller:
    """One call's canceller: wrap the session's output with :meth:`output` and its input
    with :meth:`input`."""

    def __init__(self) -> None:
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True, high_pass_filter=True)
        self._reference = np.zeros(0, dtype=np.int16)
        """The agent's audio queued for playout (at ``_reference_rate``)."""
        self._reference_rate: int | None = None
        self._paused = False
        self._pending = np.zeros(0, dtype=np.int16)
        """Caller samples short of a whole 10 ms piece."""
        self._echo: bool | None = None
        """Does this line echo? None until ``DECIDE_S`` of the agent's voice was heard."""
        self._judged_s = 0.0
        self._raw_energy = 0.0
        self._cleaned_energy = 0.0

    def output(self, sink: AudioOutput) -> AudioOutput:
        return _ReferenceTap(self, sink)

    def input(self, source: AudioInput) -> AudioInput:
        return _CancellingInput(self, source)

    # -- the agent's side --------------------------------------------------------------

    def _queue(self, frame: rtc.AudioFrame) -> None:
        if frame.num_channels != 1:
            return
        if self._reference_rate != frame.sample_rate:
            self._reference_rate = frame.sample_rate
            self._reference = np.zeros(0, dtype=np.int16)
        pcm = np.frombuffer(frame.data, dtype=np.int16)
        self._reference = np.concatenate([self._reference, pcm])

    def _drop_queued(self) -> None:
        self._reference = np.zeros(0, dtype=np.int16)

    @property
    def echo_detected(self) -> bool | None:
        return self._echo

    def _judge(self, raw: np.ndarray, cleaned: np.ndarray, played: rtc.AudioFrame) -> None:
        """While the agent's voice plays, compare what the canceller took out with what
        came in; after ``DECIDE_S`` of it, decide for the call whether the line echoes."""
        if self._echo is not None:
            return
        self._judged_s += 0.01
        self._raw_energy += float(np.mean(raw.astype(np.float64) ** 2))
        self._cleaned_energy += float(np.mean(cleaned.astype(np.float64) ** 2))
        if self._judged_s < DECIDE_S:
            return
        mean_raw = self._raw_energy / (self._judged_s * 100)
        removed_db = 10 * np.log10((self._raw_energy + 1.0) / (self._cleaned_energy + 1.0))
        self._echo = bool(mean_raw >= ECHO_FLOOR**2 and removed_db >= ECHO_REMOVED_DB)
        log.info(
            "the line echoes the agent: cancelling it" if self._echo else "no echo on the line",
            extra={"removed_db": round(float(removed_db), 1)},
        )

    def _played_10ms(self) -> rtc.AudioFrame | None:
        """The next 10 ms the caller hears of the agent (silence while paused)."""
        rate = self._reference_rate
        if rate is None:
            return None
        n = rate // 100
        piece = np.zeros(n, dtype=np.int16)
        if not self._paused:
            taken = self._reference[:n]
            piece[: len(taken)] = taken
            self._reference = self._reference[n:]
        return rtc.AudioFrame(piece.tobytes(), rate, 1, n)

    # -- the caller's side -------------------------------------------------------------

    def _clean(self, frame: rtc.AudioFrame) -> rtc.AudioFrame | None:
        """The caller's frame less the agent's echo; None until 10 ms have gathered."""
        if frame.num_channels != 1:
            return frame
        rate = frame.sample_rate
        n = rate // 100
        pcm = np.concatenate([self._pending, np.frombuffer(frame.data, dtype=np.int16)])
        whole = len(pcm) // n * n
        self._pending = pcm[whole:]
        if whole == 0:
            return None
        out = []
        for start in range(0, whole, n):
            piece = rtc.AudioFrame(pcm[start : start + n].tobytes(), rate, 1, n)
            raw = pcm[start : start + n]
            played = self._played_10ms()
            if played is not None:
                self._apm.process_reverse_stream(played)
            self._apm.set_stream_delay_ms(0)  # AEC3 finds the line's delay itself
            self._apm.process_stream(piece)
            cleaned = np.frombuffer(piece.data, dtype=np.int16)
            agent_audible = played is not None and bool(
                np.frombuffer(played.data, dtype=np.int16).any()
            )
            if agent_audible:
                assert played is not None
                self._judge(raw, cleaned, played)
            # undecided: cleaned while the agent is heard (an echo must not pass while the
            # line is being judged), raw while it is silent (there is nothing to cancel)
            echoing = self._echo or (self._echo is None and agent_audible)
            out.append(cleaned if echoing else raw)
        heard = np.concatenate(out)
        return rtc.AudioFrame(heard.tobytes(), rate, 1, len(heard))


class _ReferenceTap(AudioOutput):
    """Passes the agent's audio on to the sink, queuing a copy as the echo reference."""

    def __init__(self, canceller: EchoCanceller, sink: AudioOutput) -> None:
        super().__init__(
            label="echo-reference",
            capabilities=AudioOutputCapabilities(pause=True),
            next_in_chain=sink,
            sample_rate=sink.sample_rate,
        )
        self._canceller = canceller

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self._canceller._queue(frame)
        assert self.next_in_chain is not None
        await self.next_in_chain.capture_frame(frame)

    def flush(self) -> None:
        super().flush()
        assert self.next_in_chain is not None
        self.next_in_chain.flush()

    def clear_buffer(self) -> None:
        self._canceller._drop_queued()
        assert self.next_in_chain is not None
        self.next_in_chain.clear_buffer()

    def pause(self) -> None:
        self._canceller._paused = True
        super().pause()

    def resume(self) -> None:
        self._canceller._paused = False
        super().resume()


class _CancellingInput(AudioInput):
    def __init__(self, canceller: EchoCanceller, source: AudioInput) -> None:
        super().__init__(label="echo-cancelled", source=source)
        self._canceller = canceller

    async def __anext__(self) -> rtc.AudioFrame:
        assert self.source is not None
        while True:
            frame = await self.source.__anext__()
            cleaned = self._canceller._clean(frame)
            if cleaned is not None:
                return cleaned
