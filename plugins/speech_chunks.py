"""How the LLM's reply is cut into pieces for the voice: at sentence ends, and a long
sentence at a clause boundary once the piece has ``clause_chars`` (about 40).

A voice that synthesizes whole pieces (every tier of the TTS chain) starts speaking once
its first piece is complete. livekit's default cuts at sentence ends only, so a long
first sentence ("Yes, there is an outage in Springfield since 9:10 this morning, and our
engineers expect ...") is not spoken until the LLM has written all of it. Cutting at a
comma, semicolon, colon or dash past ~40 characters lets the voice start on the first
clause while the LLM writes the rest, with a natural pause where the cut is. A run of
``max_chars`` with no boundary at all is cut at a space.

Sentences come from livekit's blingfire tokenizer; the streaming (the buffer that holds
the last, possibly unfinished piece) is livekit's ``BufferedSentenceStream``.
"""

from __future__ import annotations

import re

from livekit import blingfire
from livekit.agents import tokenize
from livekit.agents.tokenize import token_stream, tokenizer

CLAUSE_CHARS = 40
MAX_CHARS = 120
MIN_PIECE_CHARS = 12
"""Shorter pieces ("Sure.") are joined to the next: a voice's request per word would
cost more than it saves."""

_CLAUSE_END = re.compile(r"[,;:\u2013\u2014](?=\s)|\s[\u2013\u2014-](?=\s)")


def split_pieces(
    text: str, *, clause_chars: int = CLAUSE_CHARS, max_chars: int = MAX_CHARS
) -> list[tuple[str, int, int]]:
    """``text`` as (piece, start, end) spans: sentences, long ones cut at clause
    boundaries past ``clause_chars`` and at a space past ``max_chars``."""
    pieces: list[tuple[str, int, int]] = []
    for start, end in _sentence_spans(text):
        pieces += _cut_sentence(text, start, end, clause_chars, max_chars)
    return pieces


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    if not text.strip():
        return []
    _, offsets = blingfire.text_to_sentences_with_offsets(text)
    spans, start = [], 0
    for _, end in offsets:
        if text[start:end].strip():
            spans.append((start, end))
        start = end
    if text[start:].strip():
        spans.append((start, len(text)))
    return spans


def _cut_sentence(
    text: str, start: int, end: int, clause_chars: int, max_chars: int
) -> list[tuple[str, int, int]]:
    pieces = []
    while end - start > max(clause_chars, MIN_PIECE_CHARS):
        cut = _clause_cut(text, start, end, clause_chars)
        if cut is None and end - start > max_chars:
            cut = text.rfind(" ", start + clause_chars, start + max_chars)
            cut = cut if cut > start else None
        if cut is None:
            break
        pieces.append((text[start:cut].strip(), start, cut))
        start = cut
    pieces.append((text[start:end].strip(), start, end))
    return [p for p in pieces if p[0]]


def _clause_cut(text: str, start: int, end: int, clause_chars: int) -> int | None:
    """Where to cut after the first clause boundary at least ``clause_chars`` into the
    span that leaves a piece of ``MIN_PIECE_CHARS`` or more after it."""
    for match in _CLAUSE_END.finditer(text, start + clause_chars, end):
        if end - match.end() >= MIN_PIECE_CHARS:
            return match.end()
    return None


class SpeechChunker(tokenize.SentenceTokenizer):
    """livekit's sentence-tokenizer interface over :func:`split_pieces`."""

    def __init__(self, *, clause_chars: int = CLAUSE_CHARS, max_chars: int = MAX_CHARS) -> None:
        self._clause_chars = clause_chars
        self._max_chars = max_chars

    def _split(self, text: str) -> list[tuple[str, int, int]]:
        return split_pieces(text, clause_chars=self._clause_chars, max_chars=self._max_chars)

    def tokenize(self, text: str, *, language: str | None = None) -> list[str]:
        return [piece for piece, _, _ in self._split(text)]

    def stream(self, *, language: str | None = None) -> tokenizer.SentenceStream:
        return token_stream.BufferedSentenceStream(
            tokenizer=self._split, min_token_len=MIN_PIECE_CHARS, min_ctx_len=10
        )
