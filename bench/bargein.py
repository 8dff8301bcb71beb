"""Barge-in: how fast the agent falls silent when the caller talks over it, and how often
it gives up its turn to a sound that was not an interruption; ours against livekit's
defaults, in the same run.

    python -m bench.bargein [--trials 5]

Each trial is a fresh session on the embedded stack (Silero VAD, Whisper, the dialogue
engine, Piper) speaking a long line; 1.5 s into its playout the caller's channel gets:

- **interruption**: a real caller's turn from the corpus (``tests/data/sample.wav``, both
  speakers, telephone audio), at full level;
- **backchannel**: "uh-huh", "okay", "right", "mm-hmm" spoken by espeak-ng voices (not the
  voices anything was tuned on), through an 8 kHz telephone band;
- **noise**: a 150-250 ms burst of band-limited noise (a cough, a knock);
- **echo -20 dB / -10 dB**: no caller at all, the agent's own voice leaking back into the
  caller's channel 60 ms late (a phone line has no echo canceller);
- **interruption over echo -10 dB**: a real caller's turn while the echo leaks.

Measured: onset-to-silence (from the first sample over the speech threshold to the agent's
audio pausing or stopping; interruptions), and for the other kinds whether the agent gave
up its turn (its line ended interrupted: a *false interruption*), the seconds it sat paused,
and the words of its line lost. The configurations: **ours** (the product's call object
with the settings' defaults: pause after 0.03 s of speech, real when still speaking 1.2 s
after the onset, backchannel transcripts dropped, the echo canceller) and **livekit** (a
session with its defaults: ``min_duration`` 0.5 s, ``false_interruption_timeout`` 2 s).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr
from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.io import AudioInput

from agent.admission import AdmissionDecision, CallIdentity
from agent.call import Call
from agent.pipeline import build_session, load_vad
from agent.profile import builtin_profile
from agent.settings import Settings
from agent.tools import ProfileAgent
from agent.wav_io import AGENT_SAMPLE_RATE_HZ, CALLER_SAMPLE_RATE_HZ, CapturedAudioOutput
from bench.corpus import cut_turn, load_sample_audio, load_stm

LINE = (
    "Thanks for waiting. I have looked at your account, and I can see that the router at "
    "your address went offline at nine ten this morning, together with the rest of the "
    "street. Our engineers are on site already, and they expect to have everyone back "
    "online by one in the afternoon. In the meantime you can use the mobile hotspot in "
    "your app at no cost, and I can also credit a day of service to your next bill."
)
INJECT_AT_S = 1.5
OBSERVE_S = 3.5
FRAME_MS = 20
ECHO_DELAY_S = 0.06
ONSET_LEVEL = 0.02
BACKCHANNELS = ["uh-huh", "okay", "right", "mm-hmm"]
VOICES = ["en-us", "en-us+f3", "en+m3"]


@dataclass
class Trial:
    config: str
    kind: str
    onset_to_silence_s: float | None = None
    gave_up: bool = False
    paused_s: float = 0.0
    words_lost: float = 0.0


class CallerChannel(AudioInput):
    """The caller's side of the line, paced in real time: silence, a clip once
    :meth:`inject` is called, and the agent's own voice at ``echo_gain`` (from the
    speaker's playout position, so a paused agent leaks nothing)."""

    def __init__(self, speaker: BenchSpeaker, echo_gain: float = 0.0) -> None:
        super().__init__(label="bench-caller")
        self._speaker = speaker
        self._echo_gain = echo_gain
        self._clip: np.ndarray | None = None
        self._pos = 0
        self._n = CALLER_SAMPLE_RATE_HZ * FRAME_MS // 1000
        self._deadline: float | None = None
        self.onset_at: float | None = None
        self._closed = False

    def inject(self, clip: np.ndarray) -> None:
        self._clip, self._pos = clip.astype(np.float32) / 32768.0, 0

    def close(self) -> None:
        self._closed = True

    async def __anext__(self) -> rtc.AudioFrame:
        if self._closed:
            raise StopAsyncIteration
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now
        self._deadline += FRAME_MS / 1000
        await asyncio.sleep(max(0.0, self._deadline - now))
        out = np.zeros(self._n, dtype=np.float32)
        if self._clip is not None and self._pos < len(self._clip):
            piece = self._clip[self._pos : self._pos + self._n]
            loud = np.flatnonzero(np.abs(piece) > ONSET_LEVEL)
            if self.onset_at is None and loud.size:
                self.onset_at = time.time() + loud[0] / CALLER_SAMPLE_RATE_HZ
            out[: len(piece)] += piece
            self._pos += self._n
        if self._echo_gain:
            out += self._echo_gain * self._speaker.playing(time.time() - ECHO_DELAY_S, self._n)
        pcm = (np.clip(out, -1, 1) * 32767).astype(np.int16)
        return rtc.AudioFrame(pcm.tobytes(), CALLER_SAMPLE_RATE_HZ, 1, self._n)


class BenchSpeaker(CapturedAudioOutput):
    """The virtual speaker, noting when the agent's audio paused or was cut."""

    def __init__(self) -> None:
        super().__init__()
        self.silenced_at: list[float] = []
        self.paused_total_s = 0.0
        self._pause_started: float | None = None
        self.started = asyncio.Event()

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.started.set()

    def pause(self) -> None:
        if self._paused_at is None:
            self.silenced_at.append(time.time())
            self._pause_started = time.time()
        super().pause()

    def resume(self) -> None:
        if self._pause_started is not None:
            self.paused_total_s += time.time() - self._pause_started
            self._pause_started = None
        super().resume()

    def clear_buffer(self) -> None:
        if self._playing is not None and not self._playing.interrupted:
            self.silenced_at.append(time.time())
        super().clear_buffer()

    def playing(self, at: float, n: int) -> np.ndarray:
        """The ``n`` caller-rate samples of the agent's voice being played at ``at``."""
        seg = self._playing
        if seg is None or seg.interrupted or self._paused_at is not None:
            return np.zeros(n, dtype=np.float32)
        pos = self._position_s(seg, at)
        span = n / CALLER_SAMPLE_RATE_HZ
        pcm = np.frombuffer(b"".join(seg.pcm), dtype=np.int16)
        a, b = int((pos - span) * AGENT_SAMPLE_RATE_HZ), int(pos * AGENT_SAMPLE_RATE_HZ)
        if b <= 0 or a >= len(pcm):
            return np.zeros(n, dtype=np.float32)
        piece = pcm[max(0, a) : b].astype(np.float32) / 32768.0
        out = soxr.resample(piece, AGENT_SAMPLE_RATE_HZ, CALLER_SAMPLE_RATE_HZ)
        return np.pad(out, (n - len(out), 0))[:n] if len(out) < n else out[-n:]


def telephone(pcm: np.ndarray, rate: int) -> np.ndarray:
    """Through an 8 kHz line and back to the caller rate, as int16."""
    narrow = soxr.resample(pcm.astype(np.float32), rate, 8000)
    return np.clip(soxr.resample(narrow, 8000, CALLER_SAMPLE_RATE_HZ), -32768, 32767).astype(
        np.int16
    )


def espeak(text: str, voice: str) -> np.ndarray:
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise SystemExit("espeak-ng is not installed (setup.sh installs it)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "say.wav"
        subprocess.run([exe, "-v", voice, "-w", str(out), text], check=True)
        data, rate = sf.read(str(out), dtype="int16")
    return telephone(data, rate)


def noise_burst(rng: np.random.Generator) -> np.ndarray:
    n = int(rng.uniform(0.15, 0.25) * CALLER_SAMPLE_RATE_HZ)
    burst = rng.normal(0, 0.25, n) * np.hanning(n)
    pad = np.zeros(CALLER_SAMPLE_RATE_HZ // 10)
    return telephone(np.concatenate([pad, burst, pad]) * 32767, CALLER_SAMPLE_RATE_HZ)


def interruption_clips(count: int) -> list[np.ndarray]:
    """Corpus caller turns of 1.5-4 s (real telephone speech)."""
    audio = load_sample_audio()
    turns = [t for t in load_stm() if 1.5 <= t.end_s - t.start_s <= 4.0]
    return [cut_turn(audio, t) for t in turns[:count]]


LIVEKIT_DEFAULTS = {
    "interrupt_onset_s": 0.5,  # min_duration
    "interrupt_resume_s": 2.0,  # false_interruption_timeout
    "echo_cancellation": False,  # nothing in livekit's self-hosted path cancels a line's echo
}


async def run_trial(config: str, kind: str, clip: np.ndarray | None, echo_gain: float) -> Trial:
    """One session speaking ``LINE``, ``clip`` injected 1.5 s into its playout. ``ours``
    is the product's call object (agent.call.Call: the interruption policy, the echo
    canceller); ``livekit`` is a session with livekit's interruption defaults and no
    policy."""
    settings = Settings(_env_file=None, aec_warmup_s=0.0)  # type: ignore[call-arg]
    profile = builtin_profile().model_copy(update={"greeting": LINE})
    speaker = BenchSpeaker()
    caller = CallerChannel(speaker, echo_gain)
    call: Call | None = None
    session: AgentSession
    if config == "ours":
        call = Call(
            CallIdentity(f"bench-{uuid.uuid4().hex[:8]}", None, None, None),
            AdmissionDecision(status="unmetered"),
            profile,
            settings=settings,
            vad_model=load_vad(),
        )
    else:
        settings = settings.model_copy(update=LIVEKIT_DEFAULTS)
        session = build_session(settings, load_vad(), profile)
        session.input.audio = caller
        session.output.audio = speaker
    trial = Trial(config, kind)
    try:
        if call is not None:
            await call.start(audio_input=caller, audio_output=speaker)
        else:
            await session.start(ProfileAgent(profile), record=False)
        await asyncio.wait_for(speaker.started.wait(), timeout=30)
        started = speaker.segments[0].started_at
        await asyncio.sleep(max(0.0, started + INJECT_AT_S - time.time()))
        if clip is not None:
            caller.inject(clip)
        await asyncio.sleep(OBSERVE_S)
        first = speaker.segments[0]
        trial.gave_up = first.interrupted
        trial.paused_s = speaker.paused_total_s
        if caller.onset_at is not None:
            after = [t for t in speaker.silenced_at if t >= caller.onset_at - 0.05]
            if after:
                trial.onset_to_silence_s = after[0] - caller.onset_at
        if first.interrupted:
            played = sum(len(b) for b in first.pcm) / 2 / AGENT_SAMPLE_RATE_HZ
            trial.words_lost = len(LINE.split()) * max(0.0, 1 - played / line_seconds())
    finally:
        caller.close()
        if call is not None:
            await call.aclose()
        else:
            await session.aclose()
    return trial


_LINE_S: list[float] = []


def line_seconds() -> float:
    if not _LINE_S:
        from plugins.local_tts import PiperTTS

        tts = PiperTTS()
        _LINE_S.append(len(tts.render_pcm(LINE)) / 2 / tts.sample_rate)
    return _LINE_S[0]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def main_async(trials: int) -> str:
    rng = np.random.default_rng(7)
    line_seconds()
    clips: list[tuple[str, np.ndarray | None, float]] = []
    real = interruption_clips(trials * 2)
    clips += [("interruption", c, 0.0) for c in real]
    clips += [("interruption over echo -10 dB", c, 10 ** (-10 / 20)) for c in real[:trials]]
    clips += [
        ("backchannel", espeak(word, VOICES[i % len(VOICES)]), 0.0)
        for i, word in enumerate((BACKCHANNELS * trials)[: trials * 2])
    ]
    clips += [("noise", noise_burst(rng), 0.0) for _ in range(trials)]
    clips += [("echo -20 dB", None, 10 ** (-20 / 20)) for _ in range(trials)]
    clips += [("echo -10 dB", None, 10 ** (-10 / 20)) for _ in range(trials)]
    results: list[Trial] = []
    for kind, clip, gain in clips:
        for config in ("ours", "livekit"):
            results.append(await run_trial(config, kind, clip, gain))
    return table(results)


def table(results: list[Trial]) -> str:
    lines = [
        "| kind | config | trials | onset→silence P50 / P95 / P99 (s) | gave up its turn "
        "| paused (s, mean) | words lost (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    kinds = list(dict.fromkeys(t.kind for t in results))
    headline: dict[str, list[float]] = {}
    for kind in kinds:
        for config in ("ours", "livekit"):
            rows = [t for t in results if t.kind == kind and t.config == config]
            onsets = [t.onset_to_silence_s for t in rows if t.onset_to_silence_s is not None]
            if kind.startswith("interruption"):
                if kind == "interruption":
                    headline[config] = onsets
                timing = (
                    " / ".join(f"{pct(onsets, q):.3f}" for q in (50, 95, 99)) if onsets else "–"
                )
                timing += f" ({len(onsets)} stopped)"
            else:
                timing = "–"
            gave_up = sum(t.gave_up for t in rows)
            lines.append(
                f"| {kind} | {config} | {len(rows)} | {timing} | {gave_up}/{len(rows)} "
                f"| {statistics.fmean(t.paused_s for t in rows):.2f} "
                f"| {statistics.fmean(t.words_lost for t in rows):.1f} |"
            )
    false_kinds = [t for t in results if not t.kind.startswith("interruption")]
    false_ours = sum(t.gave_up for t in false_kinds if t.config == "ours")
    false_lk = sum(t.gave_up for t in false_kinds if t.config == "livekit")
    n_false = sum(1 for t in false_kinds if t.config == "ours")
    ours, lk = headline.get("ours", []), headline.get("livekit", [])
    lines.append("")
    lines.append(
        f"Headline: onset→silence P95 ours {pct(ours, 95):.3f} s vs livekit "
        f"{pct(lk, 95):.3f} s; false interruptions ours {false_ours}/{n_false} vs livekit "
        f"{false_lk}/{n_false}"
        if ours and lk
        else "Headline: no interruption was detected"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=5, help="trials per kind (default 5)")
    args = parser.parse_args()
    if args.trials < 1:
        parser.error("--trials must be at least 1")
    logging.basicConfig(level=logging.ERROR)
    print(asyncio.run(main_async(args.trials)))


if __name__ == "__main__":
    main()
