"""Read the benchmark corpus in ``tests/data``: the STM-annotated telephone conversation
(``sample.wav`` + ``sample.stm``) and the JFK clip (``jfk.flac`` + ``jfk.txt``).

Audio comes back as 16 kHz mono int16, the format the agent's caller input takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.wav_io import CALLER_SAMPLE_RATE_HZ, load_caller_audio

DATA_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"
SAMPLE_WAV = DATA_DIR / "sample.wav"
SAMPLE_STM = DATA_DIR / "sample.stm"
JFK_FLAC = DATA_DIR / "jfk.flac"
JFK_TXT = DATA_DIR / "jfk.txt"


@dataclass(frozen=True)
class CorpusTurn:
    """One STM segment: who spoke, when (seconds from the start of the file), what."""

    speaker: str
    start_s: float
    end_s: float
    text: str

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def parse_stm(text: str, *, source: str = "<stm>") -> list[CorpusTurn]:
    """Parse STM text (``<uri> <channel> <speaker> <start_s> <end_s> <words...>``) into
    turns, in file order. Blank lines and ``;;`` comments are skipped; an empty
    transcript is allowed, as in the STM format.

    Raises:
        ValueError: a line has fewer than five fields, a time that is not a finite
            non-negative number, or ends before it starts; the message names
            ``source`` and the 1-based line number.
    """
    turns: list[CorpusTurn] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith(";;"):
            continue
        fields = line.split()
        where = f"{source}:{lineno}"
        if len(fields) < 5:
            raise ValueError(
                f"{where}: expected '<uri> <channel> <speaker> <start_s> <end_s> <words...>', "
                f"got {len(fields)} field(s): {line!r}"
            )
        _uri, _channel, speaker, start_raw, end_raw, *words = fields
        try:
            start_s, end_s = float(start_raw), float(end_raw)
        except ValueError:
            raise ValueError(
                f"{where}: start/end must be numbers of seconds, got {start_raw!r} {end_raw!r}"
            ) from None
        # float() accepts "nan" and "inf"; neither is a usable time
        if not (np.isfinite(start_s) and np.isfinite(end_s)) or start_s < 0:
            raise ValueError(f"{where}: times must be finite and >= 0, got {start_s} {end_s}")
        if end_s < start_s:
            raise ValueError(f"{where}: end {end_s} s is before start {start_s} s")
        turns.append(CorpusTurn(speaker, start_s, end_s, " ".join(words)))
    return turns


def load_stm(path: Path = SAMPLE_STM) -> list[CorpusTurn]:
    """Turns of an STM file (see :func:`parse_stm`)."""
    return parse_stm(path.read_text(encoding="utf-8"), source=str(path))


def load_sample_audio(path: Path = SAMPLE_WAV) -> np.ndarray:
    """The conversation as 16 kHz mono int16."""
    return load_caller_audio(path)


def cut_turn(
    pcm: np.ndarray,
    turn: CorpusTurn,
    *,
    pad_s: float = 0.0,
    sample_rate_hz: int = CALLER_SAMPLE_RATE_HZ,
) -> np.ndarray:
    """The samples of ``turn`` widened by ``pad_s`` on each side, clamped to the
    recording (a turn at the very start or end gets less padding, never an error).
    Returns a view into ``pcm``; empty if the turn lies wholly outside it.
    """
    if pad_s < 0:
        raise ValueError(f"pad_s must be >= 0, got {pad_s}")
    start = max(0, int(round((turn.start_s - pad_s) * sample_rate_hz)))
    end = min(len(pcm), int(round((turn.end_s + pad_s) * sample_rate_hz)))
    return pcm[start : max(start, end)]


def load_jfk() -> tuple[np.ndarray, str]:
    """The JFK clip resampled to 16 kHz mono int16, and its exact reference words."""
    return load_caller_audio(JFK_FLAC), JFK_TXT.read_text(encoding="utf-8").strip()


def int16_to_float32(pcm: np.ndarray) -> np.ndarray:
    """int16 samples scaled to [-1, 1) float32, what Whisper takes."""
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
