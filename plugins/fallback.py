"""What every provider chain (LLM, TTS, STT) shares: the record of a fallback and the
classification of a tier's failure.

A fallback is recorded three ways: in the chain's ``fallback_events`` (one chain per call,
so the call's report lists them), as a log line (the call id comes from the job's log
context) and as the Prometheus counter ``voice_agent_fallbacks_total`` (labels: stage,
provider, reason; a small fixed set).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from livekit.agents import APIConnectionError, APIStatusError
from prometheus_client import Counter

log = logging.getLogger("plugins.fallback")

FALLBACKS = Counter(
    "voice_agent_fallbacks_total",
    "A tier of a provider chain failed or was skipped, and the next one answered.",
    ["stage", "provider", "reason"],
)


@dataclass(frozen=True)
class FallbackEvent:
    stage: str
    """``llm``, ``tts`` or ``stt``."""
    provider: str
    """The tier that failed or was skipped (its breaker's name, e.g. ``tts/elevenlabs``)."""
    reason: str
    """``breaker_open``, ``first_token_timeout`` (LLM), ``first_audio_timeout`` and
    ``stalled`` (TTS), ``no_result`` (STT), ``timeout``, ``connection``, ``malformed``,
    ``rate_limited``, ``http_5xx``, ``http_4xx``, ``empty_reply``, ``no_audio`` or
    ``error``."""
    at: float
    """Unix time."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def record_fallback(
    events: list[FallbackEvent], stage: str, provider: str, reason: str, **log_extra: Any
) -> FallbackEvent:
    """Append the event to ``events``, count it and log it."""
    event = FallbackEvent(stage, provider, reason, time.time())
    events.append(event)
    FALLBACKS.labels(stage, provider, reason).inc()
    log.warning(
        "%s tier failed; the next one takes over",
        stage,
        extra={"stage": stage, "provider": provider, "reason": reason, **log_extra},
    )
    return event


class TierTimeout(Exception):
    """A tier said nothing within its budget; ``reason`` names the budget."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TierSilent(Exception):
    """A tier's stream ended without producing anything (``reason``: ``empty_reply``,
    ``no_audio``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def classify(exc: BaseException) -> tuple[str, float | None]:
    """(reason, Retry-After seconds) for a tier's failure."""
    if isinstance(exc, (TierTimeout, TierSilent)):
        return exc.reason, None
    if isinstance(exc, APIStatusError):
        if exc.status_code == 429:
            return "rate_limited", _retry_after_s(exc)
        return ("http_5xx" if exc.status_code >= 500 else "http_4xx"), None
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return "timeout", None
    if isinstance(exc, APIConnectionError):
        # the plugins report a frame they cannot parse as a connection error
        text = f"{exc} {exc.__cause__ or ''}"
        malformed = isinstance(exc.__cause__, (ValueError, TypeError, KeyError)) or any(
            marker in text for marker in _MALFORMED_MARKERS
        )
        return ("malformed" if malformed else "connection"), None
    return "error", None


_MALFORMED_MARKERS = (
    "caused by JSONDecodeError",
    "caused by TypeError",
    "caused by KeyError",
    "returned non-audio data",  # ElevenLabs' plugin, given a body that is not audio
)


def _retry_after_s(exc: APIStatusError) -> float | None:
    body = exc.body if isinstance(exc.body, dict) else {}
    value = body.get("retry_after") if body else None
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
