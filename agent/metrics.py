"""The worker's call metrics (Prometheus), beside the chains' fallback and breaker metrics
(``plugins.fallback``, ``plugins.circuit_breaker``).

``python agent.py start`` serves them on ``METRICS_PORT`` (livekit's worker does, at
``/metrics``); calls run in job processes, so prometheus-client's multiprocess mode
gathers them (livekit sets ``PROMETHEUS_MULTIPROC_DIR`` before it starts a job process).
Labels are a small fixed set: never a number, a caller or a call id.

Per-stage latencies come from livekit's own per-message metrics (the ones ``simulate``
reports): for the caller's turn, the end-of-utterance delay and the STT's delay; for the
agent's reply, the LLM's first token, the voice's first byte and the whole end of speech to
first audio.
"""

from __future__ import annotations

from livekit.agents import AgentSession
from livekit.agents.voice import events
from prometheus_client import Counter, Gauge, Histogram

CALLS_ACTIVE = Gauge(
    "voice_agent_calls_active",
    "Calls in progress on this worker.",
    multiprocess_mode="livesum",
)
CALLS = Counter(
    "voice_agent_calls_total",
    "Calls ended, by how they ended (ended, failed, refused, dropped).",
    ["status"],
)
CALL_DURATION = Histogram(
    "voice_agent_call_duration_seconds",
    "Length of the calls that ended.",
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600),
)
STAGE_LATENCY = Histogram(
    "voice_agent_stage_latency_seconds",
    "Per turn: end_of_utterance (caller's end of speech to end of turn), stt (its "
    "transcript's delay), llm_first_token, tts_first_byte, end_to_end (caller's end of "
    "speech to the agent's first audio).",
    ["stage"],
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
)
INTERRUPTIONS = Counter(
    "voice_agent_interruptions_total",
    "The caller talking over the agent: real (the agent stopped its reply) or false (it resumed).",
    ["kind"],
)

TRANSFERS = Counter(
    "voice_agent_transfers_total",
    "Callers asking for a person, by outcome: transferred, callback (no transfer number "
    "or no phone line: a ticket), rejected (the far end refused), failed, breaker_open; "
    "warm transfers also declined (the person pressed 2) and unanswered (no key).",
    ["outcome"],
)

_CALLER_STAGES = {"end_of_utterance": "end_of_turn_delay", "stt": "transcription_delay"}
_AGENT_STAGES = {
    "llm_first_token": "llm_node_ttft",
    "tts_first_byte": "tts_node_ttfb",
    "end_to_end": "e2e_latency",
}


def watch_session(session: AgentSession) -> None:
    """Observe a call's turns and interruptions for the rest of its session."""
    session.on("conversation_item_added", _on_item)
    session.on("agent_false_interruption", _on_false_interruption)


def call_started() -> None:
    CALLS_ACTIVE.inc()


def call_ended(status: str, duration_s: float, *, was_active: bool) -> None:
    if was_active:
        CALLS_ACTIVE.dec()
    CALLS.labels(status).inc()
    CALL_DURATION.observe(max(0.0, duration_s))


def _on_item(ev: events.ConversationItemAddedEvent) -> None:
    item = ev.item
    if item.type != "message" or item.role not in ("user", "assistant"):
        return
    stages = _CALLER_STAGES if item.role == "user" else _AGENT_STAGES
    metrics = item.metrics or {}
    for stage, key in stages.items():
        value = metrics.get(key)  # type: ignore[misc]
        if isinstance(value, (int, float)) and value >= 0:
            STAGE_LATENCY.labels(stage).observe(value)
    if item.role == "assistant" and item.interrupted:
        INTERRUPTIONS.labels("real").inc()


def _on_false_interruption(ev: events.AgentFalseInterruptionEvent) -> None:
    INTERRUPTIONS.labels("false").inc()


CONSOLE_AUDIO_EVENTS = Counter(
    "voice_agent_console_audio_events_total",
    "The console's sound card (python agent.py console): underrun (the speaker's callback "
    "came late), overflow (microphone samples lost), stale_callback (a replaced stream "
    "called back), device_query_failure, stream_open_failure, restart (a stream reopened).",
    ["event"],
)
