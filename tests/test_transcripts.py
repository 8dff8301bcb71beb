"""storage.transcripts: a recording's words, read a block at a time. A word on a block's
edge is heard once, whole; the words are those of the whole recording transcribed at
once; progress rises to 1."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bench.corpus import int16_to_float32, load_sample_audio
from storage.transcripts import _seam, transcribe_words
from storage.voice_encoder import SAMPLE_RATE_HZ
from tests.hearing import share_of_words_heard


@pytest.fixture(scope="module")
def call() -> np.ndarray:
    """The corpus telephone call, as the jobs read it: 16 kHz mono float."""
    return int16_to_float32(load_sample_audio())


def in_blocks(audio: np.ndarray, block_s: float) -> Iterator[np.ndarray]:
    step = int(block_s * SAMPLE_RATE_HZ)
    for start in range(0, len(audio), step):
        yield audio[start : start + step]


@pytest.fixture(scope="module")
def whole_words(call):
    return transcribe_words(call)


def text_of(words: list) -> str:
    return " ".join(w.text for w in words)


@pytest.mark.slow
@pytest.mark.parametrize("block_s", [7.3, 11.0])
def test_words_read_in_blocks_are_the_words_of_the_whole_recording(call, whole_words, block_s):
    """Blocks of 7.3 s and 11 s put a seam in the call every few sentences. Whisper hears a
    sentence a little differently without the same context ("a deep" / "of the"), but no
    word is lost at a seam or heard twice: each side holds the other's words, in order."""
    seen: list[float] = []
    words = transcribe_words(in_blocks(call, block_s), seen.append, duration_s=len(call) / 16e3)
    assert share_of_words_heard(text_of(whole_words), text_of(words)) >= 0.85
    assert share_of_words_heard(text_of(words), text_of(whole_words)) >= 0.85  # no repeats
    assert all(a.start_s <= b.start_s for a, b in zip(words, words[1:], strict=False))
    assert words[-1].end_s <= 30.0 + 1e-3 and abs(words[-1].end_s - whole_words[-1].end_s) < 1.0
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_a_seam_is_at_the_quietest_moment_near_the_end_of_a_block():
    rng = np.random.default_rng(3)
    piece = rng.normal(0, 0.1, SAMPLE_RATE_HZ * 20).astype(np.float32)
    pause = slice(int(17.2 * SAMPLE_RATE_HZ), int(17.5 * SAMPLE_RATE_HZ))
    piece[pause] *= 0.01
    earlier = slice(int(5 * SAMPLE_RATE_HZ), int(6 * SAMPLE_RATE_HZ))
    piece[earlier] = 0  # quieter still, but not among the last seconds
    assert 17.2 <= _seam(piece) / SAMPLE_RATE_HZ <= 17.5
    assert 0 < _seam(piece[: SAMPLE_RATE_HZ // 20]) < SAMPLE_RATE_HZ // 20  # shorter than a frame


def test_silence_in_blocks_has_no_words():
    blocks = [np.zeros(SAMPLE_RATE_HZ * 3, dtype=np.float32) for _ in range(6)]
    seen: list[float] = []
    assert transcribe_words(iter(blocks), seen.append, duration_s=18.0) == []
    assert seen[-1] == 1.0


@pytest.mark.parametrize("blocks", [[], [np.zeros(0, dtype=np.float32)]])
def test_no_audio_has_no_words(blocks):
    seen: list[float] = []
    assert transcribe_words(iter(blocks), seen.append) == []
    assert seen == [1.0]
