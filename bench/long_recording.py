"""Memory and time of a diarization job on long recordings: does a job's memory stay flat
as the recording grows?

Each recording is the corpus telephone call (``tests/data/sample.wav``, two speakers)
repeated to the length asked for, at 8 kHz mono as a phone upload would be, and sealed
(AES-GCM) the way the sidecar stores uploads. Each length runs in a fresh process, which
reads the sealed file the way a job does (``storage.diarization_jobs.recording_blocks``),
diarizes it with the embedding diarizer and, when asked, transcribes it with Whisper
(``storage.transcripts``). Peak RSS is the kernel's high-water mark (``VmHWM``) for the
process; "models loaded" is its RSS before the recording is opened. The baseline in the
same run (for the transcribing jobs) reads the whole recording into one array first, as
they did before 2026-12-03; diarizing alone read blocks already.

Run from the repository root: ``python -m bench.long_recording`` (4, 30 and 120 minutes,
diarized; 4 and 30 minutes also transcribed). ``--minutes`` and ``--transcribe-minutes``
change the lengths. Prints Markdown; the last line is the headline.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soxr

RATE_HZ = 8_000
"""The sealed recordings' rate: a phone upload's."""
GAP_S = 1.0
"""Silence between two repeats of the corpus call."""


def parse_minutes(text: str) -> list[float]:
    """``"4,30,120"`` as minutes; raises ValueError for anything that is not a list of
    positive numbers."""
    try:
        minutes = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"minutes must be numbers separated by commas, got {text!r}") from None
    if not minutes or any(not np.isfinite(m) or m <= 0 for m in minutes):
        raise ValueError(f"minutes must be positive, got {text!r}")
    return minutes


def _vm_kb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def seal(path: Path, minutes: float, key: bytes) -> float:
    """Write the corpus call repeated to ``minutes`` as a sealed 8 kHz recording, a repeat
    at a time; the seconds written."""
    from bench.corpus import load_sample_audio
    from storage.recording_files import Keyring, RecordingWriter

    call = load_sample_audio().astype(np.float32) / 32768.0
    phone = soxr.resample(call, 16_000, RATE_HZ)
    one = np.concatenate([phone, np.zeros(int(GAP_S * RATE_HZ), dtype=np.float32)])
    pcm = (np.clip(one, -1, 1) * 32767).astype("<i2").tobytes()
    total = int(minutes * 60 * RATE_HZ) * 2
    writer = RecordingWriter(
        path, Keyring({"bench": key}, "bench"), sample_rate=RATE_HZ, channels=1
    )
    written = 0
    while written < total:
        piece = pcm[: total - written]
        writer.write(piece)
        written += len(piece)
    writer.close()
    return written / 2 / RATE_HZ


def child(path: Path, key: bytes, duration_s: float, *, transcribe: bool, whole: bool) -> dict:
    """One job's work on the sealed file at ``path``, in this (fresh) process."""
    from storage.diarization import EmbeddingDiarizer
    from storage.diarization_jobs import recording_audio, recording_blocks
    from storage.recording_files import Keyring
    from storage.transcripts import transcribe_words

    keyring = Keyring({"bench": key}, "bench")
    diarizer = EmbeddingDiarizer()
    from bench.corpus import load_sample_audio

    warm = load_sample_audio()[: 16_000 * 10].astype(np.float32) / 32768.0
    diarizer.diarize(warm)  # load the VAD and the voice encoder
    if transcribe:
        transcribe_words(warm)  # and Whisper
    loaded_mb = _vm_kb("VmRSS") / 1024
    started = time.perf_counter()

    def audio():  # type: ignore[no-untyped-def]
        return recording_audio(path, keyring)[0] if whole else recording_blocks(path, keyring)

    turns = diarizer.diarize(audio(), duration_s=duration_s)
    words = transcribe_words(audio(), duration_s=duration_s) if transcribe else []
    return {
        "loaded_mb": loaded_mb,
        "peak_mb": _vm_kb("VmHWM") / 1024,
        "seconds": time.perf_counter() - started,
        "speakers": len({t.speaker for t in turns}),
        "words": len(words),
    }


def run_child(path: Path, key: bytes, duration_s: float, *, transcribe: bool, whole: bool) -> dict:
    args = [sys.executable, "-m", "bench.long_recording", "--child", str(path),
            "--duration", str(duration_s)]  # fmt: skip
    if transcribe:
        args.append("--transcribe")
    if whole:
        args.append("--whole")
    env = {**os.environ, "BENCH_RECORDING_KEY": base64.b64encode(key).decode()}
    done = subprocess.run(args, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", default="4,30,120", help="lengths to diarize (minutes)")
    parser.add_argument(
        "--transcribe-minutes", default="4,30", help="lengths also transcribed (minutes)"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--duration", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--transcribe", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--whole", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        key = base64.b64decode(os.environ["BENCH_RECORDING_KEY"])
        result = child(args.child, key, args.duration, transcribe=args.transcribe,
                       whole=args.whole)  # fmt: skip
        print(json.dumps(result))
        return 0
    try:
        lengths = parse_minutes(args.minutes)
        transcribed = set(parse_minutes(args.transcribe_minutes))
    except ValueError as exc:
        parser.error(str(exc))

    key = os.urandom(32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for minutes in sorted(set(lengths) | transcribed):
            path = Path(tmp) / f"{minutes:g}min.rec"
            duration_s = seal(path, minutes, key)
            kinds = [(False, False)] if minutes in lengths else []
            if minutes in transcribed:  # transcribing jobs read the whole recording before
                kinds += [(True, True), (True, False)]
            for transcribe, whole in kinds:
                got = run_child(path, key, duration_s, transcribe=transcribe, whole=whole)
                rows.append((minutes, transcribe, whole, got))
                print(f"{minutes:g} min, transcribe={transcribe}, whole={whole}: {got}",
                      file=sys.stderr, flush=True)  # fmt: skip
            path.unlink()
    print(render(rows))
    return 0


def render(rows: list[tuple[float, bool, bool, dict]]) -> str:
    lines = [
        "| recording | work | read | models loaded MB | peak RSS MB | peak - loaded MB "
        "| seconds | speakers | words |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for minutes, transcribe, whole, got in rows:
        work = "diarize + transcribe" if transcribe else "diarize"
        read = "whole (baseline)" if whole else "blocks (ours)"
        lines.append(
            f"| {minutes:g} min | {work} | {read} | {got['loaded_mb']:.0f} | {got['peak_mb']:.0f} "
            f"| {got['peak_mb'] - got['loaded_mb']:.0f} | {got['seconds']:.1f} "
            f"| {got['speakers']} | {got['words']} |"
        )
    lines.append("")
    lines.append(headline(rows))
    return "\n".join(lines)


def headline(rows: list[tuple[float, bool, bool, dict]]) -> str:
    """Growth of peak memory over models loaded, shortest to longest recording, per kind."""
    parts = []
    for transcribe in (False, True):
        for whole in (False, True):
            chosen = sorted((m, g) for m, t, w, g in rows if t == transcribe and w == whole)
            if len(chosen) < 2:
                continue
            (short_m, short), (long_m, long) = chosen[0], chosen[-1]
            grow = lambda g: g["peak_mb"] - g["loaded_mb"]  # noqa: E731
            parts.append(
                f"{'diarize + transcribe' if transcribe else 'diarize'}, "
                f"{'whole' if whole else 'blocks'}: {grow(short):.0f} MB at {short_m:g} min, "
                f"{grow(long):.0f} MB at {long_m:g} min"
            )
    return "peak RSS above the loaded models: " + "; ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
