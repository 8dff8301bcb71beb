"""The console's speaker on a busy machine whose default sink keeps changing, ours
(``agent.console_audio``) against livekit's console stream, in the same run, and what the
resampler costs per callback.

A private PulseAudio daemon (``tests.pulse``) with two null sinks; two streams play a
440 Hz tone at the same time:

- **stock**: what livekit-agents' console opens (``AgentsConsole.set_speaker_enabled``):
  24 kHz int16, 2400-sample blocks, the sound server resamples;
- **ours**: :class:`agent.console_audio.DeviceStream` at the device's rate with
  :class:`~agent.console_audio.PlayoutFiller` (soxr) and its watch.

For ``--seconds`` (180) the default sink switches ten times while ``--load`` (2) busy
processes hold the CPU; then the sound server is killed and started again 1 s later
(``--no-restart`` skips it). The report gives, per stream, underruns (PortAudio's
``output_underflow``), how much of the tone was pulled against the wall clock, restarts,
and whether and how fast its stream was reopened (the tone pulled again) after the
server restart; then the resampler's
cost per callback (10 ms at 44.1 kHz, 1024 frames at 48 kHz): soxr "LQ" (ours), soxr "HQ"
and ``numpy.interp`` (linear interpolation, what a hand-rolled converter would do).

Run from the repository root: ``python -m bench.console_audio [--seconds S] [--load N]``.
Prints Markdown; the last line is the headline.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from agent.console_audio import CONTENT_RATE_HZ, ConsoleAudioCounters, DeviceStream, PlayoutFiller
from tests.pulse import SPEAKER_SINK, start_null_sink_daemon, stop_daemon

SECOND_SINK = "headphones"
SWITCHES = 10
TONE_HZ = 440.0
STOCK_BLOCK = 2400  # livekit's console: 100 ms blocks at 24 kHz
RESUME_TIMEOUT_S = 8.0


class Tone:
    """24 kHz int16 content; thread-safe count of what was pulled."""

    def __init__(self) -> None:
        self.pulled = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> np.ndarray:
        with self._lock:
            start, self.pulled = self.pulled, self.pulled + n
        t = np.arange(start, start + n)
        return (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t / CONTENT_RATE_HZ)).astype(np.int16)


@dataclass
class Player:
    name: str
    tone: Tone
    underruns: Callable[[], int]
    restarts: Callable[[], int]
    close: Callable[[], None]


def stock_player() -> Player:
    """livekit's console speaker stream: opened once, never looked at again."""
    import sounddevice as sd

    tone, underruns = Tone(), [0]

    def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        if status.output_underflow:
            underruns[0] += 1
        outdata[:, 0] = tone(frames)

    stream = sd.OutputStream(
        callback=callback, dtype="int16", channels=1, samplerate=CONTENT_RATE_HZ,
        blocksize=STOCK_BLOCK,
    )  # fmt: skip
    stream.start()
    return Player("stock", tone, lambda: underruns[0], lambda: 0, stream.close)


def our_player() -> Player:
    tone, counters = Tone(), ConsoleAudioCounters()
    filler = PlayoutFiller(tone)

    def body(outdata: np.ndarray, frames: int, time_info: Any, status: Any, rate: int) -> None:
        if status.output_underflow:
            counters.add("underrun")
        filler.fill(outdata, frames, rate)

    stream = DeviceStream("output", None, body, counters)
    stream.start()
    return Player(
        "ours",
        tone,
        lambda: counters.counts["underrun"],
        lambda: counters.counts["restart"],
        stream.close,
    )


def _busy(stop: Any) -> None:
    x = 0
    while not stop.is_set():
        for i in range(10_000):
            x ^= i


def pactl(env: dict[str, str], *args: str) -> None:
    subprocess.run(["pactl", *args], env=env, capture_output=True, timeout=10, check=True)


def wait_until_playing(tone: Tone) -> None:
    """Until ``tone`` is pulled at the real-time rate (a new stream fills its buffer, then
    may wait for the sink: 1.7-2 s on a null sink here)."""
    since = time.monotonic()
    while time.monotonic() - since < RESUME_TIMEOUT_S:
        before = tone.pulled
        time.sleep(0.2)
        if tone.pulled - before >= 0.15 * CONTENT_RATE_HZ:
            return
    raise RuntimeError("a speaker stream did not start playing")


@dataclass
class PlaybackResult:
    name: str
    seconds: float
    pulled_s: float
    underruns: int
    restarts: int
    resumed_s: float | None = None


def run_playback(seconds: float, load: int, restart: bool) -> list[PlaybackResult]:
    runtime_dir = Path(tempfile.mkdtemp(prefix="pulse-"))
    env: dict[str, str] = {}
    saved_env = {k: os.environ.get(k) for k in ("XDG_RUNTIME_DIR", "PULSE_SERVER")}
    stop_load = multiprocessing.Event()
    loaders = [multiprocessing.Process(target=_busy, args=(stop_load,)) for _ in range(load)]
    players: list[Player] = []
    try:
        env = start_null_sink_daemon(runtime_dir)
        os.environ.update({k: env[k] for k in ("XDG_RUNTIME_DIR", "PULSE_SERVER")})
        pactl(env, "load-module", "module-null-sink", f"sink_name={SECOND_SINK}", "rate=48000")
        players = [stock_player(), our_player()]
        for player in players:
            wait_until_playing(player.tone)
        for proc in loaders:
            proc.start()
        started = time.monotonic()
        pulled = {p.name: p.tone.pulled for p in players}
        under = {p.name: p.underruns() for p in players}
        for i in range(SWITCHES):
            time.sleep(seconds / SWITCHES)
            pactl(env, "set-default-sink", SECOND_SINK if i % 2 == 0 else SPEAKER_SINK)
            print(f"switch {i + 1}/{SWITCHES}", file=sys.stderr)
        elapsed = time.monotonic() - started
        results = [
            PlaybackResult(
                p.name,
                elapsed,
                (p.tone.pulled - pulled[p.name]) / CONTENT_RATE_HZ,
                p.underruns() - under[p.name],
                p.restarts(),
            )
            for p in players
        ]
        if restart:
            stop_daemon(runtime_dir, env)
            time.sleep(1.0)
            start_null_sink_daemon(runtime_dir)
            back = time.monotonic()
            pulled = {p.name: p.tone.pulled for p in players}
            while time.monotonic() - back < RESUME_TIMEOUT_S and not all(
                r.resumed_s is not None for r in results
            ):
                time.sleep(0.05)
                for player, result in zip(players, results, strict=True):
                    if result.resumed_s is None and player.tone.pulled > pulled[player.name]:
                        result.resumed_s = time.monotonic() - back
            for player, result in zip(players, results, strict=True):
                result.restarts = player.restarts()
        return results
    finally:
        stop_load.set()
        for proc in loaders:
            proc.join(timeout=5)
        for player in players:
            player.close()
        if env:
            stop_daemon(runtime_dir, env)
        shutil.rmtree(runtime_dir, ignore_errors=True)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def per_callback_us(convert: Callable[[np.ndarray], np.ndarray], frames_in: int) -> float:
    chunk = np.sin(np.arange(frames_in) / 7.0).astype(np.float32)
    for _ in range(50):
        convert(chunk)
    times = []
    for _ in range(2000):
        t = time.perf_counter()
        convert(chunk)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def interp_converter(from_hz: int, to_hz: int) -> Callable[[np.ndarray], np.ndarray]:
    def convert(x: np.ndarray) -> np.ndarray:
        n_out = int(round(len(x) * to_hz / from_hz))
        positions = np.arange(n_out) * (from_hz / to_hz)
        return np.interp(positions, np.arange(len(x)), x).astype(np.float32)

    return convert


def run_resampler_costs() -> list[tuple[str, dict[str, float]]]:
    rows = []
    for label, device_hz, device_frames in (
        ("10 ms at 44.1 kHz (441 frames)", 44_100, 441),
        ("1024 frames at 48 kHz", 48_000, 1024),
    ):
        frames_in = int(np.ceil(device_frames * CONTENT_RATE_HZ / device_hz))
        costs = {
            "soxr LQ (ours)": soxr.ResampleStream(CONTENT_RATE_HZ, device_hz, 1, "float32", "LQ"),
            "soxr HQ": soxr.ResampleStream(CONTENT_RATE_HZ, device_hz, 1, "float32", "HQ"),
        }
        row = {name: per_callback_us(s.resample_chunk, frames_in) for name, s in costs.items()}
        row["numpy.interp"] = per_callback_us(
            interp_converter(CONTENT_RATE_HZ, device_hz), frames_in
        )
        rows.append((label, row))
    return rows


def render(
    results: Sequence[PlaybackResult],
    costs: list[tuple[str, dict[str, float]]],
    seconds: float,
    load: int,
) -> str:
    lines = [
        f"### Playback: {seconds:.0f} s, {SWITCHES} default-sink switches, {load} busy "
        "processes, then a sound-server restart",
        "",
        "| stream | seconds | tone pulled (s) | underruns | underruns per minute | restarts "
        "| stream reopened after the server restart |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        resumed = "n/a" if r.resumed_s is None else f"{r.resumed_s:.2f} s"
        if r.resumed_s is None and results and any(x.resumed_s for x in results):
            resumed = f"never (> {RESUME_TIMEOUT_S:.0f} s)"
        lines.append(
            f"| {r.name} | {r.seconds:.1f} | {r.pulled_s:.1f} | {r.underruns} "
            f"| {r.underruns / r.seconds * 60:.2f} | {r.restarts} | {resumed} |"
        )
    lines += [
        "",
        "### Resampler cost per callback (median of 2000, microseconds)",
        "",
        "| callback | soxr LQ (ours) | soxr HQ | numpy.interp | ours / interp |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, row in costs:
        ours, interp = row["soxr LQ (ours)"], row["numpy.interp"]
        lines.append(
            f"| {label} | {ours:.1f} | {row['soxr HQ']:.1f} | {interp:.1f} | {ours / interp:.2f} |"
        )
    by_name = {r.name: r for r in results}
    ours, stock = by_name["ours"], by_name["stock"]
    resumed = "skipped" if ours.resumed_s is None else f"{ours.resumed_s:.2f} s"
    stock_resumed = "never" if stock.resumed_s is None else f"{stock.resumed_s:.2f} s"
    cost = costs[0][1]
    lines += [
        "",
        f"headline: over {ours.seconds:.0f} s with {SWITCHES} sink switches and {load} busy "
        "processes, "
        f"ours {ours.underruns} underruns vs stock {stock.underruns}; after a sound-server "
        f"restart ours reopened in {resumed} (stock: {stock_resumed}); soxr costs "
        f"{cost['soxr LQ (ours)']:.0f} us per 10 ms callback "
        f"({cost['soxr LQ (ours)'] / cost['numpy.interp']:.2f}x numpy.interp)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console_audio", description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0, help="playback (default 180)")
    parser.add_argument("--load", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument("--no-restart", action="store_true", help="skip the server restart")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.load < 0:
        parser.error("--seconds must be positive and --load at least 0")
    missing = [b for b in ("pulseaudio", "pactl") if not shutil.which(b)]
    if missing:
        print(f"needs {', '.join(missing)}: bash setup.sh installs them", file=sys.stderr)
        return 2
    results = run_playback(args.seconds, args.load, not args.no_restart)
    print(render(results, run_resampler_costs(), args.seconds, args.load))
    return 0


if __name__ == "__main__":
    sys.exit(main())
