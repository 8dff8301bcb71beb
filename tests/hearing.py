"""What a caller would hear: the agent's audio transcribed with the project's own Whisper
STT, and how much of the expected words it holds.

Piper draws its noise at random, so the agent never sounds exactly the same twice and
Whisper tiny.en sometimes mishears a word of it (about 1 rendering in 20 loses "Diane"
in "Nice to meet you, Diane"). Tests therefore ask for a share of the words, in order,
not for one exact word.
"""

from __future__ import annotations

import difflib
import re

import numpy as np
import soxr

from plugins.local_stt import WHISPER_SAMPLE_RATE_HZ, WhisperSTT

SILENCE_LEVEL = 0.01
"""Full-scale amplitude under which the edges of a recording count as silence."""


def transcribe(pcm: np.ndarray, sample_rate_hz: int) -> str:
    """Whisper's transcript of mono audio (int16 or float in [-1, 1]), at any rate."""
    mono = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm
    # trim the silence around the speech: Whisper tends to invent words in it
    loud = np.flatnonzero(np.abs(mono) > SILENCE_LEVEL)
    if loud.size:
        pad = sample_rate_hz // 2
        mono = mono[max(0, loud[0] - pad) : loud[-1] + pad]
    resampled = soxr.resample(mono, sample_rate_hz, WHISPER_SAMPLE_RATE_HZ)
    return WhisperSTT().transcribe(resampled.astype(np.float32))[0]


CONTRACTIONS = {
    "can't": "can not",
    "cannot": "can not",
    "won't": "will not",
    "n't": " not",
    "'re": " are",
    "'ll": " will",
    "'ve": " have",
    "'m": " am",
}
IS_CONTRACTIONS = re.compile(r"\b(there|it|that|he|she|what|where|here|who)'s\b")
SOUND_ALIKE = {"online": "on line", "in line": "on line", "within": "with in", "10": "ten"}
"""Whisper tiny hears Piper's "back online within the next ten minutes" as "back in line
with in the next 10 minutes" now and then (CI, 2026-12-03): the same sounds, not a word
lost. Written out the same way on both sides."""


def words_of(text: str) -> list[str]:
    """Lower-case words with contractions written out: Whisper writes "there's" for a
    clearly spoken "there is" as often as not, and that is not a word lost."""
    text = IS_CONTRACTIONS.sub(r"\1 is", text.lower())
    for short, long in CONTRACTIONS.items():
        text = text.replace(short, long)
    for written, said in SOUND_ALIKE.items():
        text = re.sub(rf"\b{written}\b", said, text)
    return re.findall(r"[a-z']+", text)


def share_of_words_heard(expected: str, heard: str) -> float:
    """The share of ``expected``'s words that ``heard`` has, in the same order."""
    want, got = words_of(expected), words_of(heard)
    matcher = difflib.SequenceMatcher(None, want, got, autojunk=False)
    return sum(block.size for block in matcher.get_matching_blocks()) / max(1, len(want))
