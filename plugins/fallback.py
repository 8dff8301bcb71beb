"""What every provider chain (LLM, TTS, STT) shares: the record of a fallback and the
classification of a tier's failure.

A fallback is recorded three ways: in the chain's ``fallback_events`` (one chain per call,
so the call's report lists them), as a log line (the call id comes from the job's log
context) and as the Prometheus counter ``voice_agent_fallbacks_total`` (labels: stage,
provider, reason; a small fixed set).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Any

import httpx2
from livekit.agents import APIConnectionError, APIStatusError
from prometheus_client import Counter

from plugins.circuit_breaker import CircuitBreaker

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
    """The provider's ``Retry-After`` (seconds or an HTTP date) from the response under
    the plugin's error (the OpenAI plugin raises ``from None``: the SDK's error is its
    context), else a ``retry_after`` in the error body; None when absent or unreadable."""
    for source in (exc.__cause__, exc.__context__):
        response = getattr(source, "response", None)  # the OpenAI and Anthropic SDKs
        headers = getattr(response, "headers", None) or getattr(source, "headers", None)
        value = headers.get("retry-after") if headers is not None else None  # aiohttp's too
        if value is not None:
            return parse_retry_after(value)
    body = exc.body if isinstance(exc.body, dict) else {}
    value = body.get("retry_after")
    return parse_retry_after(str(value)) if value is not None else None


MAX_RETRY_AFTER_S = 3600.0
"""A longer ``Retry-After`` is capped: the provider is tried again within the hour."""


def parse_retry_after(value: str, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds (RFC 9110) or an HTTP
    date; capped at ``MAX_RETRY_AFTER_S``; None when it is neither (or not finite)."""
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def provider_http_client(
    breaker: CircuitBreaker, *, read_timeout_s: float = 5.0
) -> httpx2.AsyncClient:
    """The HTTP client for an SDK-based provider (OpenAI, Anthropic): the timeouts and pool
    livekit's plugins give their own (Anthropic's reads wait 30 s), plus a response hook
    that hands a 429's or 503's ``Retry-After`` to the provider's breaker (the plugins'
    errors drop the response headers)."""

    async def on_response(response: httpx2.Response) -> None:
        value = response.headers.get("retry-after")
        seconds = parse_retry_after(value) if value is not None else None
        if response.status_code in (429, 503) and seconds is not None:
            breaker.asked_to_wait(seconds)

    return httpx2.AsyncClient(
        timeout=httpx2.Timeout(connect=15.0, read=read_timeout_s, write=5.0, pool=5.0),
        follow_redirects=True,
        limits=httpx2.Limits(
            max_connections=50, max_keepalive_connections=50, keepalive_expiry=120
        ),
        event_hooks={"response": [on_response]},
    )
