"""The benchmark corpus reader: the real STM parses, bad lines fail loudly, cuts stay in bounds."""

from __future__ import annotations

import numpy as np
import pytest

from agent.wav_io import CALLER_SAMPLE_RATE_HZ
from bench.corpus import (
    CorpusTurn,
    cut_turn,
    load_jfk,
    load_sample_audio,
    load_stm,
    parse_stm,
)


def test_real_stm_parses_into_ordered_turns() -> None:
    turns = load_stm()
    assert len(turns) == 13
    assert turns[0] == CorpusTurn("Diane", 6.68, 7.16, "Hello?")
    assert turns[-1] == CorpusTurn(
        "Diane", 28.445, 29.987, "Oh, I don't hear that in New Jersey now."
    )
    assert {t.speaker for t in turns} == {"Diane", "Sheila"}
    assert all(t.end_s > t.start_s for t in turns)
    assert [t.start_s for t in turns] == sorted(t.start_s for t in turns)


def test_turns_lie_inside_the_recording() -> None:
    pcm = load_sample_audio()
    audio_s = len(pcm) / CALLER_SAMPLE_RATE_HZ
    assert 29.0 < audio_s < 31.0
    assert all(t.end_s <= audio_s for t in load_stm())


def test_blank_lines_comments_and_empty_transcripts_are_accepted() -> None:
    turns = parse_stm(";; header\n\nuri 1 A 0 1.5\nuri 1 B 1.5 2  two   words \n")
    assert turns == [CorpusTurn("A", 0.0, 1.5, ""), CorpusTurn("B", 1.5, 2.0, "two words")]


@pytest.mark.parametrize(
    "bad",
    [
        "uri 1 A 0.5",  # too few fields
        "uri 1 A zero 1.0 hi",  # start not a number
        "uri 1 A 0.0 1,5 hi",  # end not a number
        "uri 1 A 2.0 1.0 hi",  # ends before it starts
        "uri 1 A -1.0 1.0 hi",  # negative start
        "uri 1 A nan 1.0 hi",  # not finite
    ],
)
def test_malformed_line_raises_with_its_line_number(bad: str) -> None:
    text = "uri 1 A 0 1 fine\n\n" + bad + "\n"
    with pytest.raises(ValueError, match=r"my\.stm:3:"):
        parse_stm(text, source="my.stm")


def test_cut_turn_is_exact_without_padding() -> None:
    pcm = np.arange(10 * CALLER_SAMPLE_RATE_HZ, dtype=np.int16)
    seg = cut_turn(pcm, CorpusTurn("A", 1.0, 2.5, "x"))
    assert len(seg) == int(1.5 * CALLER_SAMPLE_RATE_HZ)
    assert seg[0] == pcm[CALLER_SAMPLE_RATE_HZ]


def test_cut_turn_pads_both_sides() -> None:
    pcm = np.zeros(10 * CALLER_SAMPLE_RATE_HZ, dtype=np.int16)
    seg = cut_turn(pcm, CorpusTurn("A", 1.0, 2.0, "x"), pad_s=0.2)
    assert len(seg) == int(1.4 * CALLER_SAMPLE_RATE_HZ)


def test_cut_turn_padding_is_clamped_to_the_recording() -> None:
    pcm = np.zeros(3 * CALLER_SAMPLE_RATE_HZ, dtype=np.int16)
    assert len(cut_turn(pcm, CorpusTurn("A", 0.1, 1.0, "x"), pad_s=0.5)) == int(
        1.5 * CALLER_SAMPLE_RATE_HZ
    )
    assert len(cut_turn(pcm, CorpusTurn("A", 2.5, 3.5, "x"), pad_s=0.5)) == int(
        1.0 * CALLER_SAMPLE_RATE_HZ
    )
    assert len(cut_turn(pcm, CorpusTurn("A", 5.0, 6.0, "x"), pad_s=0.5)) == 0


def test_cut_turn_rejects_negative_padding() -> None:
    with pytest.raises(ValueError, match="pad_s"):
        cut_turn(np.zeros(10, dtype=np.int16), CorpusTurn("A", 0, 0, ""), pad_s=-0.1)


def test_jfk_is_16k_audio_with_its_words() -> None:
    pcm, text = load_jfk()
    assert pcm.dtype == np.int16
    assert 10.0 < len(pcm) / CALLER_SAMPLE_RATE_HZ < 12.0
    assert text.startswith("And so, my fellow Americans")
