"""Calibrates the local STT's confidence gate: what Whisper's confidence is for real
callers (the corpus turns of ``sample.wav`` of 0.5 s or more) and for what is not speech
to be answered (line noise, mumbled sounds in espeak-ng voices on an 8 kHz line).

    python -m bench.stt_confidence

The threshold (``STT_MIN_CONFIDENCE["local"]``) must sit under every real caller and
over the rest; the last line says where the gap is.
"""

from __future__ import annotations

import statistics

import numpy as np

from bench.bargein import espeak
from bench.corpus import cut_turn, int16_to_float32, load_sample_audio, load_stm
from plugins.local_stt import WhisperSTT

MUMBLES = ["mm-hmm", "hmm", "brr", "uh"]
VOICES = ["en-us", "en-us+f3", "en+m3"]


def main() -> None:
    whisper = WhisperSTT()
    audio = load_sample_audio()
    rows = ["| input | text | confidence |", "|---|---|---:|"]
    real: list[float] = []
    for turn in load_stm():
        if turn.end_s - turn.start_s < 0.5:
            continue
        text, confidence = whisper.transcribe(int16_to_float32(cut_turn(audio, turn)))
        real.append(confidence)
        rows.append(f"| caller {turn.start_s:.1f}-{turn.end_s:.1f} s | {text} | {confidence:.3f} |")
    other: list[float] = []
    rng = np.random.default_rng(3)
    samples = [
        (f"noise {i + 1}", (rng.normal(0, 0.1, 32_000) * 32767).astype(np.int16)) for i in range(4)
    ]
    samples += [(f"{w} ({v})", espeak(w, v)) for w in MUMBLES for v in VOICES]
    for name, pcm in samples:
        text, confidence = whisper.transcribe(int16_to_float32(pcm))
        if text.strip():  # an empty transcript is never sent anyway
            other.append(confidence)
        rows.append(f"| {name} | {text or '(nothing)'} | {confidence:.3f} |")
    print("\n".join(rows))
    print()
    print(
        f"Real callers: {len(real)} turns, confidence min {min(real):.3f}, median "
        f"{statistics.median(real):.3f}; not speech with a transcript: {len(other)}, max "
        f"{max(other, default=0.0):.3f}"
    )


if __name__ == "__main__":
    main()
