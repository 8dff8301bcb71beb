"""The console's sound card I/O (agent.console_audio): resampling that always fills the
callback, a watch that reopens a stream that died, and counters; then the real thing on a
private PulseAudio daemon: default-sink switches mid-playback and a sound-server restart.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from agent.console_audio import (
    AEC_FRAME_SAMPLES,
    CONTENT_RATE_HZ,
    CaptureResampler,
    ConsoleAudioCounters,
    DeviceInfo,
    DeviceStream,
    PlayoutFiller,
    Resamplers,
    RestartLimiter,
)
from tests.pulse import SPEAKER_SINK, start_null_sink_daemon, stop_daemon

DEVICE_RATES_HZ = [8_000, 16_000, 22_050, 24_000, 44_100, 48_000]
TONE_HZ = 440.0


class Tone:
    """24 kHz int16 content: a 440 Hz tone at ``amplitude``, then silence after
    ``seconds`` (None: endless). Counts what was pulled."""

    def __init__(self, amplitude: float = 0.5, seconds: float | None = None) -> None:
        self.amplitude = amplitude
        self.limit = None if seconds is None else int(seconds * CONTENT_RATE_HZ)
        self.pulled = 0
        self.sizes: list[int] = []

    def __call__(self, n: int) -> np.ndarray:
        self.sizes.append(n)
        t = np.arange(self.pulled, self.pulled + n)
        pcm = self.amplitude * 32767 * np.sin(2 * np.pi * TONE_HZ * t / CONTENT_RATE_HZ)
        if self.limit is not None:
            pcm[t >= self.limit] = 0
        self.pulled += n
        return pcm.astype(np.int16)


def play(filler: PlayoutFiller, frame_counts: list[int], rate_hz: int) -> np.ndarray:
    out = []
    for frames in frame_counts:
        buf = np.full((frames, 1), 9.0, dtype=np.float32)  # garbage the filler must overwrite
        filler.fill(buf, frames, rate_hz)
        out.append(buf[:, 0].copy())
    return np.concatenate(out)


def dominant_hz(audio: np.ndarray, rate_hz: int) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return float(np.fft.rfftfreq(len(audio), 1 / rate_hz)[np.argmax(spectrum)])


@settings(max_examples=40, deadline=None)
@given(
    rate_hz=st.sampled_from(DEVICE_RATES_HZ),
    frame_counts=st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=40),
)
def test_the_speaker_callback_is_always_filled_with_exactly_frames_samples_in_range(
    rate_hz: int, frame_counts: list[int]
) -> None:
    filler = PlayoutFiller(Tone(amplitude=1.0))
    for frames in frame_counts:
        buf = np.full((frames, 2), 9.0, dtype=np.float32)
        filler.fill(buf, frames, rate_hz)
        assert buf.dtype == np.float32
        assert np.all(np.abs(buf) <= 1.0)
        assert np.array_equal(buf[:, 0], buf[:, 1])  # every channel gets the same audio


@pytest.mark.parametrize("rate_hz", DEVICE_RATES_HZ)
def test_the_tone_comes_out_at_its_pitch_and_without_clicks_at_callback_boundaries(
    rate_hz: int,
) -> None:
    rng = np.random.default_rng(rate_hz)
    frame_counts = [int(n) for n in rng.integers(64, 2048, size=60)]
    audio = play(PlayoutFiller(Tone()), frame_counts, rate_hz)
    steady = audio[rate_hz // 10 :]  # past the resampler's start-up delay
    assert dominant_hz(steady, rate_hz) == pytest.approx(TONE_HZ, rel=0.02)
    # a tone's largest step between samples; a gap or a repeat at a boundary is a click
    max_step = 0.5 * 2 * np.pi * TONE_HZ / rate_hz
    assert np.max(np.abs(np.diff(steady))) <= max_step * 1.1


def test_the_filler_pulls_content_at_the_real_time_rate_in_whole_echo_canceller_frames() -> None:
    tone = Tone()
    rate_hz, frames = 44_100, 441  # 10 ms callbacks
    play(PlayoutFiller(tone), [frames] * 500, rate_hz)  # 5 s
    assert all(n % AEC_FRAME_SAMPLES == 0 for n in tone.sizes)
    # ahead of what was played: a frame and the resampler's delay (< 10 ms), no more
    assert 5 * CONTENT_RATE_HZ <= tone.pulled <= 5 * CONTENT_RATE_HZ + 2 * AEC_FRAME_SAMPLES


def test_full_scale_content_is_clipped_to_minus_one_to_one() -> None:
    square = np.where(np.arange(24_000) % 48 < 24, 32767, -32768).astype(np.int16)
    pos = 0

    def pull(n: int) -> np.ndarray:
        nonlocal pos
        out = np.resize(square[pos % len(square) :], n)
        pos += n
        return out

    audio = play(PlayoutFiller(pull), [512] * 100, 48_000)
    assert np.max(np.abs(audio)) <= 1.0
    assert np.max(audio) == pytest.approx(1.0, abs=1e-6)  # soxr rings over 1: clipped


def test_no_content_is_silence() -> None:
    audio = play(PlayoutFiller(lambda n: np.zeros(n, dtype=np.int16)), [300] * 10, 44_100)
    assert not audio.any()


def test_one_resampler_per_rate_pair_and_a_new_rate_starts_clean() -> None:
    resamplers = Resamplers()
    filler = PlayoutFiller(Tone(), resamplers)
    play(filler, [512] * 20, 44_100)
    play(filler, [512] * 20, 48_000)  # the stream reopened on a device at another rate
    play(filler, [512] * 20, 44_100)
    play(filler, [512] * 20, CONTENT_RATE_HZ)  # no resampling at all
    assert len(resamplers) == 2
    assert resamplers.get(44_100, 24_000) is resamplers.get(44_100, 24_000)


@pytest.mark.parametrize("rate_hz", [16_000, 24_000, 44_100, 48_000])
def test_the_microphone_arrives_at_24_khz_in_whole_10_ms_frames(rate_hz: int) -> None:
    capture = CaptureResampler()
    rng = np.random.default_rng(1)
    t = np.arange(3 * rate_hz)
    mic = (0.5 * np.sin(2 * np.pi * TONE_HZ * t / rate_hz)).astype(np.float32)
    out, pos = [], 0
    while pos < len(mic):
        n = int(rng.integers(100, 3000))
        pcm = capture.feed(mic[pos : pos + n, None], rate_hz)
        assert pcm.dtype == np.int16 and len(pcm) % AEC_FRAME_SAMPLES == 0
        out.append(pcm)
        pos += n
    audio = np.concatenate(out).astype(np.float32) / 32768
    delay = int(0.01 * CONTENT_RATE_HZ)  # the resampler's, at most 10 ms
    assert 0 <= 3 * CONTENT_RATE_HZ - len(audio) <= AEC_FRAME_SAMPLES + delay
    assert dominant_hz(audio[2400:], CONTENT_RATE_HZ) == pytest.approx(TONE_HZ, rel=0.02)


def test_a_clipping_microphone_does_not_wrap_around() -> None:
    loud = np.full((4800, 1), 1.5, dtype=np.float32)
    pcm = CaptureResampler().feed(loud, CONTENT_RATE_HZ)
    assert pcm.min() > 0 and pcm.max() == 32767


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_restarts_are_bounded_in_rate() -> None:
    clock = FakeClock()
    limiter = RestartLimiter(min_interval_s=0.5, clock=clock)
    allowed = []
    for _ in range(32):  # 4 s of a device failing every 0.125 s
        allowed.append(limiter.allow())
        clock.now += 0.125
    assert allowed[0]  # the first failure is acted on at once
    assert allowed == [i % 4 == 0 for i in range(32)]  # then every 0.5 s


class FakeStream:
    """What DeviceStream needs of a sounddevice stream; the test calls back."""

    def __init__(self, callback: Any, on_finished: Any) -> None:
        self.callback = callback
        self.on_finished = on_finished
        self.active = True
        self.closed = False

    def close(self, ignore_errors: bool = False) -> None:
        self.closed = True
        self.active = False


class Devices:
    """The device query and stream factory a DeviceStream is given."""

    def __init__(self) -> None:
        self.info = DeviceInfo("headset", 48_000)
        self.query_fails = False
        self.open_fails = False
        self.queries = 0
        self.streams: list[FakeStream] = []
        self.opened_at_rates: list[int] = []

    def query(self, device: Any, kind: str) -> DeviceInfo:
        self.queries += 1
        if self.query_fails:
            raise OSError("PortAudio: device unavailable")
        return self.info

    def open_stream(self, kind: str, device: Any, rate: int, callback: Any, fin: Any) -> Any:
        if self.open_fails:
            raise OSError("Error opening OutputStream: Device unavailable")
        self.opened_at_rates.append(rate)
        self.streams.append(FakeStream(callback, fin))
        return self.streams[-1]


def speaker(devices: Devices, clock: FakeClock) -> tuple[DeviceStream, list[int], Any]:
    bodies: list[int] = []
    counters = ConsoleAudioCounters()

    def body(data: np.ndarray, frames: int, time_info: Any, status: Any, rate: int) -> None:
        data.fill(0.5)
        bodies.append(rate)

    stream = DeviceStream(
        "output",
        None,
        body,
        counters,
        query=devices.query,
        open_stream=devices.open_stream,
        clock=clock,
        stall_s=3.0,
        startup_grace_s=3.0,
        query_cooldown_s=2.0,
        limiter=RestartLimiter(clock=clock),
    )
    stream.open()
    return stream, bodies, counters


def call_back(fake: FakeStream) -> np.ndarray:
    out = np.full((256, 1), 9.0, dtype=np.float32)
    fake.callback(out, 256, None, SimpleNamespace(output_underflow=False))
    return out


def restarts_in_prometheus() -> float:
    return (
        REGISTRY.get_sample_value("voice_agent_console_audio_events_total", {"event": "restart"})
        or 0.0
    )


def test_a_stream_that_stops_is_reopened_and_the_old_one_is_ignored() -> None:
    exported_before = restarts_in_prometheus()
    devices, clock = Devices(), FakeClock()
    stream, bodies, counters = speaker(devices, clock)
    first = devices.streams[0]
    call_back(first)
    assert stream.check() is None
    first.on_finished()  # PortAudio ended it: the device went away
    assert stream.check() == "stream stopped"
    assert len(devices.streams) == 2 and first.closed and stream.generation == 2
    # the replaced stream calling back late gets silence and takes nothing from the new one
    assert not call_back(first).any()
    assert bodies == [48_000]
    call_back(devices.streams[1])
    assert bodies == [48_000, 48_000]
    assert counters.counts["restart"] == 1 and counters.counts["stale_callback"] == 1
    assert restarts_in_prometheus() == exported_before + 1


def test_a_stream_whose_callbacks_stall_is_reopened() -> None:
    devices, clock = Devices(), FakeClock()
    stream, _, counters = speaker(devices, clock)
    clock.now += 2.5  # starting up: a stream may wait for its device before it plays
    assert stream.check() is None
    call_back(devices.streams[0])
    clock.now += 2.9  # PortAudio recovering from an underrun: not yet a stall
    assert stream.check() is None
    clock.now += 0.2  # 3.1 s without a callback
    assert stream.check() == "stream stalled"
    assert counters.counts["restart"] == 1


def test_a_failing_device_query_keeps_the_last_good_device_and_cools_down() -> None:
    devices, clock = Devices(), FakeClock()
    stream, _, counters = speaker(devices, clock)
    devices.query_fails = True
    devices.streams[0].on_finished()
    stream.check()  # queries, fails, reopens on the last good device
    assert counters.counts["device_query_failure"] == 1
    assert devices.opened_at_rates == [48_000, 48_000] and stream.device == devices.info
    queries = devices.queries
    for _ in range(5):  # the new stream keeps dying within the 2 s cooldown
        clock.now += 0.3
        devices.streams[-1].on_finished()
        stream.check()
    assert devices.queries == queries  # no query until the cooldown is over
    clock.now += 1.0
    devices.query_fails = False
    devices.info = DeviceInfo("speakers", 44_100)
    devices.streams[-1].on_finished()
    stream.check()
    assert devices.opened_at_rates[-1] == 44_100


def test_a_stream_that_cannot_open_is_retried_at_a_bounded_rate_until_it_opens() -> None:
    devices, clock = Devices(), FakeClock()
    stream, _, counters = speaker(devices, clock)
    devices.open_fails = True
    devices.streams[0].on_finished()
    for _ in range(20):  # 2 s of ticks
        stream.check()
        clock.now += 0.1
    failures = counters.counts["stream_open_failure"]
    assert failures == 4  # every 0.5 s
    devices.open_fails = False
    clock.now += 2.0
    assert stream.check() == "no stream"
    assert len(devices.streams) == 2
    assert "stream open failure" in counters.summary()


# --- the real sound server ---------------------------------------------------------------


def pactl(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        ["pactl", *args], env=env, capture_output=True, text=True, timeout=10, check=True
    )
    return done.stdout


def real_speaker(tone: Tone, counters: ConsoleAudioCounters) -> DeviceStream:
    filler = PlayoutFiller(tone)

    def body(data: np.ndarray, frames: int, time_info: Any, status: Any, rate: int) -> None:
        if status.output_underflow:
            counters.add("underrun")
        filler.fill(data, frames, rate)

    return DeviceStream("output", None, body, counters)


@pytest.fixture
def pulse_env(pulse_null_sinks: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """This process's PortAudio talks to the private daemon (ALSA's pulse plugin reads the
    environment when it opens a stream)."""
    for name in ("XDG_RUNTIME_DIR", "PULSE_SERVER"):
        monkeypatch.setenv(name, pulse_null_sinks[name])
    return pulse_null_sinks


def wait_until_playing(tone: Tone, timeout_s: float = 6.0) -> float:
    """Seconds until the speaker pulls its content at the real-time rate (a new stream
    fills its buffer, then may wait for the sink: 1.7-2 s on a null sink here)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        before = tone.pulled
        time.sleep(0.2)
        if tone.pulled - before >= 0.15 * CONTENT_RATE_HZ:
            return time.monotonic() - started - 0.2
    raise AssertionError(f"the speaker did not start playing within {timeout_s} s")


def loud_seconds(path: Path) -> float:
    audio, rate = sf.read(path, dtype="float32")
    if audio.ndim > 1:
        audio = audio.mean(axis=1)
    blocks = audio[: len(audio) // 480 * 480].reshape(-1, 480)
    return float((np.sqrt((blocks**2).mean(axis=1)) > 0.05).sum() * 480 / rate)


@pytest.mark.slow
def test_playback_follows_ten_default_sink_switches_without_a_gap(
    pulse_env: dict[str, str], tmp_path: Path
) -> None:
    pactl(pulse_env, "load-module", "module-null-sink", "sink_name=headphones", "rate=48000")
    recorders = {
        sink: subprocess.Popen(
            ["parecord", f"--device={sink}.monitor", "--file-format=wav", str(tmp_path / sink)],
            env=pulse_env,
        )
        for sink in (SPEAKER_SINK, "headphones")
    }
    tone, counters = Tone(), ConsoleAudioCounters()
    stream = real_speaker(tone, counters)
    stream.start()
    try:
        wait_until_playing(tone)
        started, pulled_before = time.monotonic(), tone.pulled
        for i in range(10):
            pactl(pulse_env, "set-default-sink", "headphones" if i % 2 == 0 else SPEAKER_SINK)
            time.sleep(0.5)
        elapsed = time.monotonic() - started
        pulled = tone.pulled - pulled_before
    finally:
        stream.close()
        for rec in recorders.values():
            rec.terminate()
            rec.wait(timeout=10)
    # the content kept flowing at the real-time rate all along, on the same stream
    assert pulled / CONTENT_RATE_HZ == pytest.approx(elapsed, abs=0.25)
    assert counters.counts["restart"] == 0 and stream.generation == 1
    heard = {sink: loud_seconds(tmp_path / sink) for sink in recorders}
    assert all(s >= 1.5 for s in heard.values()), heard  # both sinks played it, in turns
    assert sum(heard.values()) >= elapsed - 0.5, heard


@pytest.mark.slow
def test_a_sound_server_restart_is_survived_and_playback_resumes_within_a_second(
    pulse_env: dict[str, str],
) -> None:
    runtime_dir = Path(pulse_env["XDG_RUNTIME_DIR"])
    tone, counters = Tone(), ConsoleAudioCounters()
    stream = real_speaker(tone, counters)
    stream.start()
    try:
        wait_until_playing(tone)
        stop_daemon(runtime_dir, pulse_env)
        time.sleep(1.5)  # no server: the stream ended, reopening fails
        assert stream.generation >= 1 and counters.counts["restart"] >= 1
        assert not stream.is_open
        start_null_sink_daemon(runtime_dir)
        back = time.monotonic()
        while not stream.is_open and time.monotonic() - back < 5.0:
            time.sleep(0.01)
        reopened_after_s = time.monotonic() - back
        playing_after_s = reopened_after_s + wait_until_playing(tone)
    finally:
        stream.close()
    print(f"reopened after {reopened_after_s:.2f} s, playing after {playing_after_s:.2f} s")
    assert reopened_after_s <= 1.0, counters.summary()
    # and playing again once the new stream's buffer and the sink have started
    assert playing_after_s <= 1.0 + 2.5, (reopened_after_s, playing_after_s)
    assert counters.counts["stream_open_failure"] >= 1, counters.summary()


@pytest.mark.slow
def test_the_console_audio_benchmark_reopens_ours_where_livekits_stream_stays_dead(
    pulse_null_sinks: dict[str, str],  # skips without PulseAudio; the bench runs its own
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench.console_audio import main

    assert main(["--seconds", "2", "--load", "0"]) == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if "| 2." in line}
    assert "never" in rows["stock"]
    assert re.search(r"\| \d\.\d\d s \|$", rows["ours"]), rows["ours"]
    assert out.strip().splitlines()[-1].startswith("headline: over 2 s")
