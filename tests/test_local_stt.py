"""The local Whisper STT's encoder window: cut to the utterance, never cutting speech, and
the words the same as with Whisper's own 30 s window."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bench.corpus import cut_turn, int16_to_float32, load_jfk, load_sample_audio, load_stm
from plugins.local_stt import (
    WHISPER_FRAMES_PER_S,
    WhisperOptions,
    WhisperSTT,
    _load_model,
    _window,
    bundled_whisper_model_dir,
    encoder_window_frames,
)


@pytest.mark.parametrize(
    ("duration_s", "frames"),
    [(0.0, 2000), (0.2, 2000), (3.5, 2000), (19.0, 2000), (19.2, 2100), (21.0, 2200)],
)
def test_the_window_is_twenty_seconds_or_the_utterance_and_a_second(duration_s, frames):
    assert encoder_window_frames(duration_s) == frames


@pytest.mark.parametrize("duration_s", [29.0, 29.5, 30.0, 45.0])
def test_an_utterance_near_or_past_thirty_seconds_gets_whispers_own_window(duration_s):
    assert encoder_window_frames(duration_s) is None


def test_the_window_always_holds_the_utterance():
    for duration_s in np.linspace(0, 28.0, 281):
        frames = encoder_window_frames(float(duration_s))
        assert frames is not None and frames >= (duration_s + 1) * WHISPER_FRAMES_PER_S


def test_the_model_encodes_only_the_window_its_thread_set():
    options = WhisperOptions(bundled_whisper_model_dir())
    model = _load_model(options.model_dir, options.cpu_threads)
    padded = np.zeros((1, 80, 3000), dtype=np.float32)
    assert model.encode(padded).shape == [1, 1500, 384]  # Whisper's own: 2 frames a position
    _window.frames = 2000
    try:
        assert model.encode(padded).shape == [1, 1000, 384]
    finally:
        _window.frames = None
    assert model.encode(padded).shape == [1, 1500, 384]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def whisper(*, short_window: bool) -> WhisperSTT:
    return WhisperSTT(WhisperOptions(bundled_whisper_model_dir(), short_window=short_window))


def test_jfk_is_transcribed_word_for_word_with_the_short_window():
    pcm, text = load_jfk()  # 11 s: a 20 s window
    heard, confidence = whisper(short_window=True).transcribe(int16_to_float32(pcm))
    assert words(heard) == words(text)
    assert confidence > 0.5


def test_telephone_turns_are_heard_as_with_the_whole_window():
    """The corpus's caller turns: the short window loses no word the 30 s window hears
    (on this corpus it hears the same words or one more; bench.stt_wer has the WER)."""
    audio = load_sample_audio()
    turns = [t for t in load_stm() if t.duration_s >= 1.5][:6]
    short, full = whisper(short_window=True), whisper(short_window=False)
    for turn in turns:
        pcm = int16_to_float32(cut_turn(audio, turn, pad_s=0.2))
        ours, whole = short.transcribe(pcm)[0], full.transcribe(pcm)[0]
        assert len(words(ours)) >= len(words(whole)) - 1, (ours, whole)
