"""Who spoke when: speaker turns, the exports people ask for, and the turns of our own calls.

A call recorded by the worker has the caller on the left channel and the agent on the
right, on one clock, so its turns come from the channels themselves: the agent's channel
is the clean audio it played (silence is digital zero), the caller's is a phone line, so
each is gated on its own level with a short hangover and gaps under ``MERGE_GAP_S``
closed. When a job is told the call had more people than channels (a speakerphone, a
phone handed over), :func:`split_caller` names the caller channel's voices ``caller``,
``caller 2``, ... from that channel's own diarization (storage.diarization_jobs runs it).
Uploaded audio is diarized by storage.diarization.

Exports: RTTM, JSON, SRT, VTT, TXT, CSV and TSV of the turns, and a speaker-attributed
transcript (words given with their times are assigned to the speaker talking at their
midpoint, or the nearest turn; consecutive words of one speaker are merged into one line).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np

FRAME_S = 0.02
MERGE_GAP_S = 0.3
MIN_TURN_S = 0.1
CHANNEL_SPEAKERS = ("caller", "agent")

ExportFormat = Literal["rttm", "json", "srt", "vtt", "txt", "csv", "tsv"]
EXPORT_FORMATS: tuple[str, ...] = ("rttm", "json", "srt", "vtt", "txt", "csv", "tsv")
MEDIA_TYPES = {
    "rttm": "text/plain",
    "json": "application/json",
    "srt": "application/x-subrip",
    "vtt": "text/vtt",
    "txt": "text/plain",
    "csv": "text/csv",
    "tsv": "text/tab-separated-values",
}


@dataclass(frozen=True)
class Turn:
    start_s: float
    end_s: float
    speaker: str
    text: str = ""

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Word:
    start_s: float
    end_s: float
    text: str


class _ChannelGate:
    """One channel's speech, frame by frame: above the level threshold, with a hangover
    (a word's soft end is kept)."""

    def __init__(self, threshold: float, hangover_frames: int = 8) -> None:
        self.threshold = threshold
        self.hangover = hangover_frames
        self.active: list[bool] = []
        self._left = 0

    def push(self, frame: np.ndarray) -> None:
        level = float(np.sqrt(np.mean(frame.astype(np.float64) ** 2))) if len(frame) else 0.0
        if level >= self.threshold:
            self._left = self.hangover
            self.active.append(True)
        elif self._left > 0:
            self._left -= 1
            self.active.append(True)
        else:
            self.active.append(False)


def _turns(active: Sequence[bool], speaker: str) -> list[Turn]:
    turns: list[Turn] = []
    start: int | None = None
    for i, on in enumerate([*active, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            turns.append(Turn(round(start * FRAME_S, 3), round(i * FRAME_S, 3), speaker))
            start = None
    merged: list[Turn] = []
    for turn in turns:
        if merged and turn.start_s - merged[-1].end_s < MERGE_GAP_S:
            merged[-1] = Turn(merged[-1].start_s, turn.end_s, speaker)
        else:
            merged.append(turn)
    return [t for t in merged if t.duration_s >= MIN_TURN_S]


def channel_turns(
    chunks: Iterable[bytes],
    sample_rate: int,
    *,
    caller_threshold: float = 300.0,
    agent_threshold: float = 30.0,
) -> list[Turn]:
    """The turns of a two-channel call recording (16-bit PCM, caller left, agent right),
    read chunk by chunk, in time order."""
    frame = int(sample_rate * FRAME_S) * 2  # samples per frame, both channels
    gates = (_ChannelGate(caller_threshold), _ChannelGate(agent_threshold))
    pending = np.zeros(0, dtype=np.int16)
    for chunk in chunks:
        pending = np.concatenate([pending, np.frombuffer(chunk, dtype=np.int16)])
        whole = len(pending) // frame * frame
        for start in range(0, whole, frame):
            piece = pending[start : start + frame]
            gates[0].push(piece[0::2])
            gates[1].push(piece[1::2])
        pending = pending[whole:]
    turns = [t for gate, who in zip(gates, CHANNEL_SPEAKERS, strict=True)
             for t in _turns(gate.active, who)]  # fmt: skip
    return sorted(turns, key=lambda t: (t.start_s, t.speaker))


def split_caller(turns: Sequence[Turn], voices: Sequence[Turn]) -> list[Turn]:
    """A call's channel turns with the caller's split by voice.

    ``voices`` is the diarization of the caller's channel alone (any labels). With fewer
    than two voices the turns come back as they are; with more, each caller turn is cut
    where the voice changes and each piece is named after its voice: ``caller`` for the
    first heard, then ``caller 2``, ``caller 3``. A stretch of a turn no voice covers takes
    the voice before it (at the turn's start, the one after; with no voice inside the
    turn, the nearest)."""
    order: list[str] = []
    for voice in sorted(voices, key=lambda v: v.start_s):
        if voice.speaker not in order:
            order.append(voice.speaker)
    if len(order) < 2:
        return list(turns)
    names = {who: "caller" if i == 0 else f"caller {i + 1}" for i, who in enumerate(order)}
    by_start = sorted(voices, key=lambda v: v.start_s)
    out: list[Turn] = []
    for turn in turns:
        if turn.speaker != CHANNEL_SPEAKERS[0]:
            out.append(turn)
            continue
        inside = [v for v in by_start if v.end_s > turn.start_s and v.start_s < turn.end_s]
        if not inside:
            nearest = min(
                by_start,
                key=lambda v: min(abs(v.start_s - turn.end_s), abs(turn.start_s - v.end_s)),
            )
            out.append(Turn(turn.start_s, turn.end_s, names[nearest.speaker]))
            continue
        pieces: list[Turn] = []
        for i, voice in enumerate(inside):
            start = turn.start_s if i == 0 else max(turn.start_s, voice.start_s)
            end = turn.end_s if i == len(inside) - 1 else max(start, inside[i + 1].start_s)
            name = names[voice.speaker]
            if pieces and pieces[-1].speaker == name:
                pieces[-1] = Turn(pieces[-1].start_s, end, name)
            elif end > start:
                pieces.append(Turn(start, end, name))
        out.extend(pieces)
    return sorted(out, key=lambda t: (t.start_s, t.speaker))


def attribute_words(turns: Sequence[Turn], words: Sequence[Word]) -> list[Turn]:
    """A speaker-attributed transcript: each word to the turn around its midpoint (else
    the nearest), consecutive words of one speaker merged into one line."""
    if not turns:
        return []
    lines: list[Turn] = []
    for word in sorted(words, key=lambda w: w.start_s):
        mid = (word.start_s + word.end_s) / 2
        speaker = min(
            turns,
            key=lambda t: (
                0.0
                if t.start_s <= mid <= t.end_s
                else min(abs(mid - t.start_s), abs(mid - t.end_s))
            ),
        ).speaker
        if lines and lines[-1].speaker == speaker:
            last = lines[-1]
            lines[-1] = Turn(last.start_s, word.end_s, speaker, f"{last.text} {word.text}")
        else:
            lines.append(Turn(word.start_s, word.end_s, speaker, word.text))
    return lines


def _clock(seconds: float, sep: str) -> str:
    ms = round(seconds * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _said(turn: Turn) -> str:
    return f"{turn.speaker}: {turn.text}" if turn.text else turn.speaker


def export(turns: Sequence[Turn], fmt: str, *, name: str = "recording") -> str:
    """``turns`` in ``fmt`` (one of :data:`EXPORT_FORMATS`); ValueError otherwise."""
    if fmt == "rttm":
        return "".join(
            f"SPEAKER {name} 1 {t.start_s:.3f} {t.duration_s:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
            for t in turns
        )
    if fmt == "json":
        return json.dumps({"uri": name, "turns": [asdict(t) for t in turns]}, indent=2) + "\n"
    if fmt in ("srt", "vtt"):
        sep = "," if fmt == "srt" else "."
        blocks = [
            f"{_clock(t.start_s, sep)} --> {_clock(t.end_s, sep)}\n{_said(t)}\n" for t in turns
        ]
        if fmt == "srt":
            return "\n".join(f"{i}\n{block}" for i, block in enumerate(blocks, 1))
        return "WEBVTT\n\n" + "\n".join(blocks)
    if fmt == "txt":
        return "".join(
            f"[{_clock(t.start_s, '.')} - {_clock(t.end_s, '.')}] {_said(t)}\n" for t in turns
        )
    if fmt in ("csv", "tsv"):
        out = io.StringIO()
        writer = csv.writer(out, delimiter="," if fmt == "csv" else "\t", lineterminator="\n")
        writer.writerow(["start_s", "end_s", "speaker", "text"])
        for t in turns:
            writer.writerow([f"{t.start_s:.3f}", f"{t.end_s:.3f}", t.speaker, t.text])
        return out.getvalue()
    raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(EXPORT_FORMATS)}")
