"""The LLM's reply cut into pieces for the voice: sentences, and long sentences at a
clause boundary past ~40 characters, so the voice starts before the LLM has finished."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from livekit.plugins import openai

from plugins.circuit_breaker import CircuitBreaker
from plugins.speech_chunks import CLAUSE_CHARS, MAX_CHARS, SpeechChunker, split_pieces
from plugins.tts_chain import TTSChain

pytestmark = pytest.mark.usefixtures("job_http_session")

LONG = (
    "Yes, there is an outage in Springfield since 9:10 this morning, and our engineers "
    "expect service back by 1 pm today; I will text you when it is fixed."
)


def test_a_long_sentence_is_cut_at_its_clauses_and_short_ones_are_left_whole():
    assert [p for p, _, _ in split_pieces(LONG)] == [
        "Yes, there is an outage in Springfield since 9:10 this morning,",
        "and our engineers expect service back by 1 pm today;",
        "I will text you when it is fixed.",
    ]
    # a comma before 40 characters is not a cut: "Yes," alone would sound clipped
    assert [p for p, _, _ in split_pieces("Yes, I can help with that. Sure.")] == [
        "Yes, I can help with that.",
        "Sure.",
    ]
    assert split_pieces("") == [] and split_pieces("   \n ") == []


WORDS = st.lists(
    st.one_of(
        st.from_regex(r"[A-Za-z']{1,12}", fullmatch=True),
        st.sampled_from([",", ".", ";", " -", "?", "!", ":", "9:10", "1.5"]),
    ),
    max_size=80,
).map(lambda ws: " ".join(ws))


@settings(max_examples=300, deadline=None)
@given(WORDS)
def test_pieces_keep_every_word_in_order_and_stay_short(text: str):
    pieces = split_pieces(text)
    assert " ".join(p for p, _, _ in pieces).split() == text.split()
    for piece, start, end in pieces:
        assert text[start:end].strip() == piece
        longest_word = max((len(w) for w in piece.split()), default=0)
        assert (
            len(piece) <= MAX_CHARS
            or longest_word > MAX_CHARS - CLAUSE_CHARS
            or (
                # a sentence blingfire would not cut, with no space to cut at after 40 chars
                " " not in piece[CLAUSE_CHARS:MAX_CHARS]
            )
        )


@settings(max_examples=100, deadline=None)
@given(WORDS, st.integers(min_value=1, max_value=30))
def test_streamed_text_comes_out_as_the_same_words_whatever_its_chunks(text: str, size: int):
    async def run() -> list[str]:
        stream = SpeechChunker().stream()
        for i in range(0, len(text), size):
            stream.push_text(text[i : i + size])
        stream.end_input()
        return [ev.token async for ev in stream]

    out = asyncio.run(run())
    assert " ".join(out).split() == text.split()


async def test_the_voice_starts_on_the_first_clause_before_the_llm_has_written_the_rest(
    openai_server,
):
    chain = TTSChain(
        [
            (
                openai.TTS(
                    api_key="sk-test", base_url=openai_server.base_url, response_format="pcm"
                ),
                CircuitBreaker("tts/openai"),
            )
        ]
    )
    stream = chain.stream()
    # the LLM has written "..., and our engineers" (a clause is cut once 12 characters
    # of the next are written: "..., right?" stays whole)
    split = LONG.index("engineers") + len("engineers")
    first, rest = LONG[:split], LONG[split:]
    stream.push_text(first)
    events = aiter(stream)
    await asyncio.wait_for(anext(events), timeout=5.0)  # audio, with the rest unwritten
    assert openai_server.speech_texts == [
        "Yes, there is an outage in Springfield since 9:10 this morning,"
    ]
    stream.push_text(rest)
    stream.end_input()
    async for _ in events:
        pass
    assert openai_server.speech_texts[1:] == [
        "and our engineers expect service back by 1 pm today;",
        "I will text you when it is fixed.",
    ]
    await stream.aclose()
    await chain.aclose()
