"""A call's usage becomes billing events in the local outbox, metered during the call."""

from __future__ import annotations

from livekit.agents.metrics import LLMModelUsage, STTModelUsage, TTSModelUsage
from livekit.agents.voice.agent_session import AgentSessionUsage

from agent.metering import CallMeter
from agent.outbox import Outbox
from storage.models import UsageKind


def usage(stt_s: float, tokens_in: int, tokens_out: int, chars: int) -> AgentSessionUsage:
    return AgentSessionUsage(
        model_usage=[
            STTModelUsage(provider="local", model="whisper", audio_duration=stt_s),
            LLMModelUsage(
                provider="local", model="dlg", input_tokens=tokens_in, output_tokens=tokens_out
            ),
            TTSModelUsage(provider="local", model="piper", characters_count=chars),
        ]
    )


def test_each_flush_emits_only_the_new_usage_with_deterministic_keys(tmp_path, monkeypatch):
    clock = iter([100.0, 190.5])
    monkeypatch.setattr("agent.metering.time.monotonic", lambda: next(clock))
    current = usage(10.0, 100, 20, 300)
    outbox = Outbox(tmp_path / "outbox.db")
    meter = CallMeter(
        outbox, call_id="call-1", organisation_id=7, usage=lambda: current, started_at=40.0
    )

    assert meter.flush() == 5
    current = usage(12.5, 100, 35, 300)
    assert meter.flush() == 3  # call seconds, STT, LLM output grew; input and TTS did not

    events = {d.idempotency_key: d for d in outbox.due(100, now=10**10)}
    assert events["call-1:call_seconds:0"].quantity == 60
    assert events["call-1:call_seconds:1"].quantity == 91  # ceil(150.5) - 60
    assert events["call-1:stt_audio_ms:1"].quantity == 2500
    assert events["call-1:llm_output_tokens:1"].quantity == 15
    assert "call-1:llm_input_tokens:1" not in events
    assert {d.organisation_id for d in events.values()} == {7}
    assert sum(d.quantity for d in events.values() if d.kind == UsageKind.tts_characters) == 300


def test_nothing_new_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr("agent.metering.time.monotonic", lambda: 0.0)
    outbox = Outbox(tmp_path / "outbox.db")
    meter = CallMeter(
        outbox,
        call_id="c",
        organisation_id=1,
        usage=lambda: AgentSessionUsage(model_usage=[]),
        started_at=0.0,
    )
    assert meter.flush() == 0
    assert outbox.pending_count() == 0
