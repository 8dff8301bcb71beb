"""The console's sound card I/O, hardened for real laptops.

livekit-agents' console (``livekit.agents.cli._legacy.AgentsConsole``) opens its microphone
and speaker once, at a fixed 24 kHz, and never looks at them again: a sound server that
restarts (a Bluetooth headset connecting, PulseAudio crashing, a USB headset unplugged
from a raw ALSA device) leaves a silent agent until the console is restarted.
:class:`HardenedConsole` keeps livekit's console (its UI, echo canceller, keyboard and
session wiring) and owns only the two streams:

- each opens at the device's own rate; :class:`PlayoutFiller` and :class:`CaptureResampler`
  convert with soxr (one streaming resampler per rate pair, kept while that pair is in
  use), and the speaker's callback always fills exactly ``frames`` float32 samples in
  [-1, 1], padding with silence or keeping the excess for the next callback;
- :class:`DeviceStream` watches its stream from a thread: a stream that stopped (its
  callbacks ended, or none came for ``stall_s``) is reopened, at most
  :class:`RestartLimiter`'s rate; a device query that fails keeps the last good device
  and is not retried for ``query_cooldown_s``; callbacks of a replaced stream (its
  *generation* is old) are ignored, so two streams never drain the same audio;
- :class:`ConsoleAudioCounters` counts underruns, overflows, stale callbacks, device-query
  failures, stream-open failures and restarts into Prometheus
  (``voice_agent_console_audio_events_total``) and for the summary printed on exit.

Device switches: PortAudio reads its device list once, so the console plays to and
records from the sound server's default device (PulseAudio or PipeWire), which moves the
streams itself when headphones are plugged in or the default sink changes
(``tests/test_console_audio.py`` switches it ten times mid-playback). What the server
cannot move (the server restarting, a raw ALSA device unplugged) ends the stream, and the
watch reopens it.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import soxr
from livekit import rtc
from livekit.agents.cli._legacy import AgentsConsole, CLIError

from agent.metrics import CONSOLE_AUDIO_EVENTS

log = logging.getLogger("voice-agent.console")

CONTENT_RATE_HZ = 24_000
"""livekit's console: the agent's audio, the echo canceller and the microphone frames."""
AEC_FRAME_SAMPLES = 240
"""10 ms at 24 kHz: the echo canceller's frame."""

STREAM_LATENCY_S = 0.1
"""The sound card's buffer. PortAudio's own choice on PulseAudio (35 ms) underran 5 times
in 3 minutes on this 2-core machine under load (bench.console_audio); livekit's console
plays 100 ms blocks. What is in the buffer still plays after a barge-in."""

Kind = Literal["input", "output"]
Clock = Callable[[], float]


@dataclass
class ConsoleAudioCounters:
    """What went wrong with the console's sound card, for metrics and the exit summary."""

    counts: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(
            (
                "underrun",
                "overflow",
                "stale_callback",
                "device_query_failure",
                "stream_open_failure",
                "restart",
            ),
            0,
        )
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, event: str) -> None:
        """Counts ``event`` (a key of ``counts``); called from audio callbacks too."""
        with self._lock:
            self.counts[event] += 1
        CONSOLE_AUDIO_EVENTS.labels(event).inc()

    def summary(self) -> str:
        with self._lock:
            parts = [f"{n} {event.replace('_', ' ')}" for event, n in self.counts.items()]
        return "console audio: " + ", ".join(parts)


class Resamplers:
    """One soxr streaming resampler per (from, to) rate pair; None where they are equal.

    A stream keeps its filter state between chunks (no clicks at callback boundaries); a
    pair is reset with :meth:`reset` when its stream restarts, so no audio of the old
    stream leaks into the new one."""

    def __init__(self) -> None:
        self._streams: dict[tuple[int, int], soxr.ResampleStream] = {}

    def get(self, from_hz: int, to_hz: int) -> soxr.ResampleStream | None:
        if from_hz == to_hz:
            return None
        key = (from_hz, to_hz)
        stream = self._streams.get(key)
        if stream is None:
            # "LQ": 1-6 ms of delay where "HQ" adds 9-32 ms (measured), on a path where the
            # agent must hear a barge-in fast; its 16-bit precision is what the pcm carries
            stream = self._streams[key] = soxr.ResampleStream(from_hz, to_hz, 1, "float32", "LQ")
        return stream

    def reset(self) -> None:
        for stream in self._streams.values():
            stream.clear()

    def __len__(self) -> int:
        return len(self._streams)


class PlayoutFiller:
    """Fills a speaker callback's buffer from 24 kHz content, at the device's rate.

    ``pull(n)`` returns the next ``n`` content samples (int16, silence where there is
    none; ``n`` is always a multiple of 240). The filler pulls just enough, resamples, and
    keeps what one callback did not use for the next one."""

    def __init__(
        self,
        pull: Callable[[int], np.ndarray],
        resamplers: Resamplers | None = None,
        *,
        content_rate_hz: int = CONTENT_RATE_HZ,
    ) -> None:
        self._pull = pull
        self._resamplers = Resamplers() if resamplers is None else resamplers
        self._content_rate_hz = content_rate_hz
        self._pending = np.zeros(0, dtype=np.float32)
        self._device_rate_hz: int | None = None

    def fill(self, outdata: np.ndarray, frames: int, device_rate_hz: int) -> None:
        """Writes exactly ``frames`` samples of float32 in [-1, 1] to every channel of
        ``outdata`` (shape ``(frames, channels)``)."""
        if device_rate_hz != self._device_rate_hz:
            self._device_rate_hz = device_rate_hz
            self._pending = np.zeros(0, dtype=np.float32)
            self._resamplers.reset()
        resampler = self._resamplers.get(self._content_rate_hz, device_rate_hz)
        chunks = [self._pending]
        have = len(self._pending)
        while have < frames:
            missing = (frames - have) * self._content_rate_hz / device_rate_hz
            n = max(1, math.ceil(missing / AEC_FRAME_SAMPLES)) * AEC_FRAME_SAMPLES
            content = self._pull(n).astype(np.float32) / 32768.0
            out = content if resampler is None else resampler.resample_chunk(content)
            chunks.append(out)
            have += len(out)
        audio = np.concatenate(chunks)
        np.clip(audio[:frames], -1.0, 1.0, out=outdata[:, 0])
        if outdata.shape[1] > 1:
            outdata[:, 1:] = outdata[:, :1]
        self._pending = audio[frames:].copy()


class CaptureResampler:
    """Microphone samples at the device's rate to 24 kHz int16, in whole 10 ms frames."""

    def __init__(self, resamplers: Resamplers | None = None) -> None:
        self._resamplers = Resamplers() if resamplers is None else resamplers
        self._pending = np.zeros(0, dtype=np.int16)
        self._device_rate_hz: int | None = None

    def feed(self, indata: np.ndarray, device_rate_hz: int) -> np.ndarray:
        """Takes one callback's first channel (float32); returns the 24 kHz int16 samples
        ready so far, a multiple of 240 (possibly none)."""
        if device_rate_hz != self._device_rate_hz:
            self._device_rate_hz = device_rate_hz
            self._pending = np.zeros(0, dtype=np.int16)
            self._resamplers.reset()
        resampler = self._resamplers.get(device_rate_hz, CONTENT_RATE_HZ)
        mono = np.ascontiguousarray(indata[:, 0], dtype=np.float32)
        audio = mono if resampler is None else resampler.resample_chunk(mono)
        pcm = (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype(np.int16)
        pcm = np.concatenate([self._pending, pcm])
        ready = len(pcm) - len(pcm) % AEC_FRAME_SAMPLES
        self._pending = pcm[ready:]
        return pcm[:ready]


class RestartLimiter:
    """Stream restarts at least ``min_interval_s`` apart: a device that fails the moment
    it opens must not spin the watch thread, and one that comes back is reached within
    that interval (plus a watch tick)."""

    def __init__(self, *, min_interval_s: float = 0.5, clock: Clock = time.monotonic) -> None:
        self._min_interval_s = min_interval_s
        self._clock = clock
        self._last: float | None = None

    def allow(self) -> bool:
        """True (and counted) when a restart may happen now."""
        now = self._clock()
        if self._last is not None and now - self._last < self._min_interval_s:
            return False
        self._last = now
        return True


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    sample_rate_hz: int


def query_device(device: int | str | None, kind: Kind) -> DeviceInfo:
    """The device's name and default rate from PortAudio (the default device for None).

    Raises what sounddevice raises: ``sounddevice.PortAudioError`` or ``ValueError``."""
    import sounddevice as sd

    info = sd.query_devices(device, kind=kind)
    return DeviceInfo(str(info["name"]), int(info["default_samplerate"]))


StreamCallback = Callable[[np.ndarray, int, Any, Any, int], None]
"""``(data, frames, time_info, status, sample_rate_hz)``."""


def open_sounddevice_stream(
    kind: Kind,
    device: int | str | None,
    sample_rate_hz: int,
    callback: Callable[[np.ndarray, int, Any, Any], None],
    on_finished: Callable[[], None],
) -> Any:
    """A started ``sounddevice`` stream, mono float32, with :data:`STREAM_LATENCY_S` of
    buffering; raises ``PortAudioError``."""
    import sounddevice as sd

    cls = sd.OutputStream if kind == "output" else sd.InputStream
    stream = cls(
        samplerate=sample_rate_hz,
        device=device,
        channels=1,
        dtype="float32",
        latency=STREAM_LATENCY_S,
        callback=callback,
        finished_callback=on_finished,
    )
    try:
        stream.start()
    except Exception:
        stream.close(ignore_errors=True)
        raise
    return stream


class DeviceStream:
    """One direction of the console's sound card, kept alive by :meth:`check`.

    ``body(data, frames, time_info, status, sample_rate_hz)`` runs in the audio thread for
    the current stream only. ``check()`` runs every ``tick_s`` in a watch thread (see
    :meth:`start`) and reopens the stream when it stopped or stalled, on the device
    queried anew (or, while queries fail, the last good one).
    """

    def __init__(
        self,
        kind: Kind,
        device: int | str | None,
        body: StreamCallback,
        counters: ConsoleAudioCounters,
        *,
        query: Callable[[int | str | None, Kind], DeviceInfo] = query_device,
        open_stream: Callable[..., Any] = open_sounddevice_stream,
        clock: Clock = time.monotonic,
        stall_s: float = 3.0,
        startup_grace_s: float = 3.0,
        query_cooldown_s: float = 2.0,
        limiter: RestartLimiter | None = None,
    ) -> None:
        self.kind: Kind = kind
        self._device = device
        self._body = body
        self._counters = counters
        self._query = query
        self._open_stream = open_stream
        self._clock = clock
        self._stall_s = stall_s
        self._startup_grace_s = startup_grace_s
        self._query_cooldown_s = query_cooldown_s
        self._limiter = limiter or RestartLimiter(clock=clock)
        self._lock = threading.Lock()
        self._stream: Any = None
        self._generation = 0
        self._finished_generation = -1
        self._opened: DeviceInfo | None = None
        self._last_good: DeviceInfo | None = None
        self._last_callback = 0.0
        self._opened_at = 0.0
        self._query_retry_at = 0.0
        self._watch: threading.Thread | None = None
        self._closed = threading.Event()

    @property
    def device(self) -> DeviceInfo | None:
        """The device the current stream plays to or records from."""
        return self._opened

    @property
    def is_open(self) -> bool:
        """Whether a stream is open (False between a failure and the next reopen)."""
        return self._stream is not None

    @property
    def generation(self) -> int:
        """Increases with every stream opened."""
        return self._generation

    def open(self) -> None:
        """Opens the first stream. Raises what the device query or PortAudio raises: at
        start the console says it cannot use the device, as livekit's does."""
        info = self._query(self._device, self.kind)
        self._last_good = info
        self._open(info)

    def start(self, tick_s: float = 0.1) -> None:
        """Opens the stream and starts the watch thread (see :meth:`open`)."""
        self.open()

        def watch() -> None:
            while not self._closed.wait(tick_s):
                try:
                    self.check()
                except Exception:  # the watch must outlive any one failure
                    log.exception("console %s watch failed", self.kind)

        self._watch = threading.Thread(target=watch, name=f"console-{self.kind}", daemon=True)
        self._watch.start()

    def check(self) -> str | None:
        """Reopens the stream if it needs it and the limiter allows; returns why it was
        reopened (or attempted), else None."""
        now = self._clock()
        reason = self._needs_reopen(now)
        if reason is None or not self._limiter.allow():
            return None
        info = self._device_now(now)
        if info is None:
            return None
        log.warning(
            "console %s stream restarted",
            self.kind,
            extra={"reason": reason, "device": info.name, "sample_rate_hz": info.sample_rate_hz},
        )
        self._counters.add("restart")
        self._close_stream()
        try:
            self._open(info)
        except Exception as exc:
            self._counters.add("stream_open_failure")
            log.warning(
                "console %s stream could not open",
                self.kind,
                extra={"device": info.name, "error": str(exc)},
            )
        return reason

    def close(self) -> None:
        self._closed.set()
        if self._watch is not None and self._watch is not threading.current_thread():
            self._watch.join(timeout=2.0)
        self._close_stream()

    def _needs_reopen(self, now: float) -> str | None:
        with self._lock:
            stream, generation = self._stream, self._generation
            finished = self._finished_generation == generation
            last_callback = self._last_callback
            starting = now - self._opened_at < self._startup_grace_s
        if stream is None:
            return "no stream"
        if finished or not stream.active:
            return "stream stopped"
        # a stream's first callbacks fill its buffer, then it may wait for the device, and
        # PortAudio recovers from an underrun the same way (1.7-2 s on a PulseAudio null
        # sink here): that is no stall, and reopening would only start the wait again
        if not starting and now - last_callback > self._stall_s:
            return "stream stalled"
        return None

    def _device_now(self, now: float) -> DeviceInfo | None:
        """The device to reopen: queried again, or the last good one while queries cool
        down after a failure (None if there never was one)."""
        if now < self._query_retry_at:
            return self._last_good
        try:
            info = self._query(self._device, self.kind)
        except Exception as exc:
            self._counters.add("device_query_failure")
            self._query_retry_at = now + self._query_cooldown_s
            log.warning(
                "console %s device query failed; keeping the last good device",
                self.kind,
                extra={"error": str(exc)},
            )
            return self._last_good
        self._last_good = info
        return info

    def _open(self, info: DeviceInfo) -> None:
        with self._lock:
            self._generation += 1
            generation = self._generation
            self._last_callback = self._opened_at = self._clock()
        rate = info.sample_rate_hz

        def callback(data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if generation != self._generation:
                # a replaced stream still calling back: leave the audio to the new one
                self._counters.add("stale_callback")
                if self.kind == "output":
                    data.fill(0)
                return
            self._last_callback = self._clock()
            self._body(data, frames, time_info, status, rate)

        def on_finished() -> None:
            with self._lock:
                self._finished_generation = generation

        stream = self._open_stream(self.kind, self._device, rate, callback, on_finished)
        with self._lock:
            self._stream = stream
        self._opened = info

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close(ignore_errors=True)
            except Exception as exc:  # a dead device may refuse even that
                log.debug("console stream close failed", extra={"error": str(exc)})


class HardenedConsole(AgentsConsole):
    """livekit's console with :class:`DeviceStream` speakers and microphone.

    livekit's own stream callbacks stay the place where the echo canceller, the level
    meter and the session's frames are handled; they get 24 kHz int16 as they expect."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_counters = ConsoleAudioCounters()
        self._speaker: DeviceStream | None = None
        self._mic: DeviceStream | None = None
        self._filler = PlayoutFiller(self._pull_playout)
        self._capture = CaptureResampler()

    def set_microphone_enabled(self, enable: bool, *, device: int | str | None = None) -> None:
        if self._mic is not None:
            self._mic.close()
            self._mic = self._input_name = None
        if enable:
            self._mic = self._started("input", device, self._on_mic, "microphone")
            self._input_name = self._mic.device.name if self._mic.device else None

    def set_speaker_enabled(self, enable: bool, *, device: int | str | None = None) -> None:
        if self._speaker is not None:
            self._speaker.close()
            self._speaker = self._output_name = None
        if enable:
            self._speaker = self._started("output", device, self._on_speaker, "speaker")
            self._output_name = self._speaker.device.name if self._speaker.device else None

    def _started(
        self, kind: Kind, device: int | str | None, body: StreamCallback, what: str
    ) -> DeviceStream:
        """A started :class:`DeviceStream`; raises livekit's CLIError when it cannot open."""
        stream = DeviceStream(kind, device, body, self.audio_counters)
        try:
            stream.start()
        except Exception as exc:
            raise CLIError(f"Unable to open the {what} ({exc}).") from None
        return stream

    def _on_speaker(
        self, outdata: np.ndarray, frames: int, time_info: Any, status: Any, rate_hz: int
    ) -> None:
        if status.output_underflow:
            self.audio_counters.add("underrun")
        if not self.io_acquired:
            outdata.fill(0)
            return
        self._output_delay = time_info.outputBufferDacTime - time_info.currentTime
        self._filler.fill(outdata, frames, rate_hz)

    def _pull_playout(self, n: int) -> np.ndarray:
        """The agent's next ``n`` samples at 24 kHz, shown to the echo canceller."""
        pcm = np.zeros((n, 1), dtype=np.int16)
        self._io_audio_output.read_into(pcm, n)
        for start in range(0, n, AEC_FRAME_SAMPLES):
            chunk = pcm[start : start + AEC_FRAME_SAMPLES, 0]
            self._apm.process_reverse_stream(
                rtc.AudioFrame(chunk.tobytes(), CONTENT_RATE_HZ, 1, AEC_FRAME_SAMPLES)
            )
        return pcm[:, 0]

    def _on_mic(
        self, indata: np.ndarray, frames: int, time_info: Any, status: Any, rate_hz: int
    ) -> None:
        if status.input_overflow:
            self.audio_counters.add("overflow")
        pcm = self._capture.feed(indata, rate_hz)
        if len(pcm):
            self._sd_input_callback(pcm[:, None], len(pcm), time_info)


def install_hardened_console() -> HardenedConsole:
    """Makes :class:`HardenedConsole` the console ``cli.run_app`` will run (call before)."""
    console = HardenedConsole()
    AgentsConsole._instance = console
    return console
