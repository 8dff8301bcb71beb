"""The STT confidence gate: a final transcript the STT is not sure of is not sent to the
LLM. The agent asks the caller to say it again; after ``misses_before_keypad`` misses in a
row it offers the keypad (DTMF) instead. A transcript that passes resets the count.

Thresholds are per provider, because confidences are not comparable across them:
Deepgram's is a word-level probability (correct telephone speech scores above 0.9),
Whisper's is ``exp`` of its mean token log-probability (lower for the same audio).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Literal

log = logging.getLogger("plugins.confidence_gate")

Verdict = Literal["pass", "repeat", "keypad"]
DEFAULT_MIN_CONFIDENCE = 0.6


class ConfidenceGate:
    def __init__(
        self,
        min_confidence: Mapping[str, float],
        *,
        default: float = DEFAULT_MIN_CONFIDENCE,
        misses_before_keypad: int = 3,
    ) -> None:
        if misses_before_keypad < 1:
            raise ValueError("misses_before_keypad >= 1")
        for provider, value in {**min_confidence, "default": default}.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"min confidence for {provider} must be within 0-1: {value}")
        self._min = dict(min_confidence)
        self._default = default
        self.misses_before_keypad = misses_before_keypad
        self.misses = 0
        """Unsure transcripts in a row."""

    def threshold(self, provider: str) -> float:
        return self._min.get(provider, self._default)

    def judge(self, confidence: float, provider: str) -> Verdict:
        if confidence >= self.threshold(provider):
            self.misses = 0
            return "pass"
        self.misses += 1
        log.info(
            "unsure transcript held back",
            extra={"provider": provider, "confidence": round(confidence, 3), "misses": self.misses},
        )
        if self.misses >= self.misses_before_keypad:
            self.misses = 0
            return "keypad"
        return "repeat"
