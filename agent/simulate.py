"""A whole call with no room and no sound card: a caller recording in, the agent's speech
out, and a report of what was said, how fast, and what it used.

This is the headless way to try the agent and the harness the tests and benchmarks use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from livekit.agents import llm, vad
from livekit.agents.utils import http_context
from livekit.agents.voice import events

from agent.admission import CallIdentity, decide_admission
from agent.call import Call
from agent.dtmf import KeyPresses
from agent.metering import UsageTotals, usage_totals
from agent.outbox import Outbox, OutboxSender
from agent.profile import ProfileStore, local_profile
from agent.settings import Settings
from agent.sidecar_client import SidecarClient, configured_sidecar
from agent.tools import ProfileAgent
from agent.wav_io import (
    AGENT_SAMPLE_RATE_HZ,
    CALLER_SAMPLE_RATE_HZ,
    CallerAudioInput,
    CapturedAudioOutput,
)
from billing.agent_profile import AgentProfile
from plugins.fallback import FallbackEvent
from plugins.llm_chain import LLMChain
from plugins.stt_chain import STTChain
from plugins.tts_chain import TTSChain

log = logging.getLogger("agent.simulate")

KEY_INTERVAL_S = 0.2


@dataclass
class Utterance:
    role: str  # "caller" | "agent"
    text: str
    start_s: float | None
    end_s: float | None
    interrupted: bool = False


@dataclass
class TurnLatency:
    caller_text: str
    agent_text: str
    end_of_speech_to_first_audio_s: float | None
    end_of_utterance_delay_s: float | None
    stt_delay_s: float | None
    llm_first_token_s: float | None
    tts_first_byte_s: float | None


@dataclass
class CallReport:
    input: str
    caller_audio_s: float
    call_duration_s: float
    stack: dict[str, str]
    call_id: str = ""
    agent: str = ""
    """The profile's name."""
    admission: str = ""
    """``unmetered`` (no sidecar), ``admitted``, ``unleased`` or ``refused``."""
    refusal_reason: str | None = None
    status: str | None = None
    """How the call ended: ``ended``, ``failed`` or ``refused``."""
    billing_events_pending: int | None = None
    """With a sidecar: events still in the outbox after the call (0: all delivered)."""
    transcript: list[Utterance] = field(default_factory=list)
    turns: list[TurnLatency] = field(default_factory=list)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    fallback_events: list[dict[str, Any]] = field(default_factory=list)
    """Provider fallbacks during the call: stage, provider, reason, unix time."""
    errors: list[str] = field(default_factory=list)
    usage: UsageTotals = field(default_factory=UsageTotals)
    recording: str | None = None
    """The call's encrypted recording (``RECORD_CALLS``), where the worker left it."""

    def median_latency_s(self) -> float | None:
        values = [
            t.end_of_speech_to_first_audio_s
            for t in self.turns
            if t.end_of_speech_to_first_audio_s is not None
        ]
        return statistics.median(values) if values else None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class SimulationOptions:
    realtime: bool = True
    greeting: bool = True
    quiet_after_s: float = 2.0
    """The call ends once the caller's audio is over and nothing happened for this long."""
    transcript_timeout_s: float = 8.0
    """... or this long, when the caller's last speech has produced no transcript yet."""
    max_tail_s: float = 30.0
    """Upper bound on how long the call may go on after the caller's audio ends."""
    agent_id: int | None = None
    """The sidecar's agent to call (else the dialled number's, else the local profile)."""
    organisation_id: int | None = None
    """Billed for the call when the sidecar cannot tell (else ``DEFAULT_ORGANISATION_ID``)."""
    dialled_number: str | None = None
    caller_number: str | None = None
    """As a SIP caller's: masked in logs and in the sidecar's call row."""
    dtmf: list[KeyPresses] = field(default_factory=list)
    """Keypad presses, at seconds from the session's start (``--dtmf``)."""
    caller_input: Callable[..., CallerAudioInput] = CallerAudioInput
    """Builds the caller's audio input as ``caller_input(pcm, realtime=...)``: a subclass
    may observe the pacing (bench.density counts frames handed over late)."""


async def simulate_call(
    caller_pcm: np.ndarray,
    settings: Settings,
    vad_model: vad.VAD,
    *,
    options: SimulationOptions | None = None,
    input_name: str = "caller",
    profile: AgentProfile | None = None,
) -> tuple[CallReport, np.ndarray]:
    """Run one call the way the worker runs a room's: admission (with ``SIDECAR_URL``), the
    agent's profile (``profile``, else the admitted agent's from the sidecar, else the
    local one), the call object, metering through the outbox, which is delivered to the
    sidecar before this returns. Returns the report and the agent's audio (16-bit mono,
    24 kHz), placed on the call's timeline."""
    opts = options or SimulationOptions()
    caller = opts.caller_input(caller_pcm, realtime=opts.realtime)
    speaker = CapturedAudioOutput()
    collector = _EventCollector()
    activity = _ActivityTracker()
    caller_audio_s = len(caller_pcm) / CALLER_SAMPLE_RATE_HZ
    # a recording has no acoustic echo: no echo-canceller warm-up to wait for, and no echo
    # to cancel (the canceller would damp a caller talking over the agent's first words
    # while it judges the line; bench.bargein and tests/test_echo.py exercise it)
    settings = settings.model_copy(update={"aec_warmup_s": 0.0, "echo_cancellation": False})
    sidecar = configured_sidecar(settings)
    identity = CallIdentity(
        call_id=f"sim-{uuid.uuid4().hex[:16]}",
        organisation_id=opts.organisation_id or settings.default_organisation_id,
        agent_id=opts.agent_id,
        dialled_number=opts.dialled_number,
    )

    async with http_context.open():
        decision = await decide_admission(identity, sidecar, fail_open=settings.admission_fail_open)
        if profile is None:
            profiles = ProfileStore(local_profile(settings.agent_profile))
            profile = await profiles.for_call(decision.agent_id, sidecar)
        call = Call(
            decision.identity(identity.call_id),
            decision,
            profile,
            settings=settings,
            vad_model=vad_model,
            sidecar=sidecar,
            caller_number=opts.caller_number,
        )
        keys: asyncio.Task[None] | None = None
        try:
            await call.start(
                audio_input=caller,
                audio_output=speaker,
                greet=opts.greeting,
                observe=lambda session: _observe(session, collector, activity),
            )
            if opts.dtmf:
                keys = asyncio.create_task(_press_keys(call, opts.dtmf), name="dtmf")
            if not call.ended.is_set():
                assert isinstance(call.agent, ProfileAgent)
                await call.agent.greeted.wait()
                caller.play()
                await _first(
                    call.ended.wait(), caller.done.wait(), timeout_s=caller_audio_s * 2 + 10
                )
                await _wait_until_quiet(call, activity, opts)
        finally:
            if keys is not None:
                keys.cancel()
            caller.close()
            await call.aclose()
        t0 = call.session_started_at
        session = call.session
        assert session is not None
        stack = {
            "stt": _chain_label(session.stt),
            "llm": _chain_label(session.llm),
            "tts": _chain_label(session.tts),
        }
        fallbacks = sorted(
            (e for model in (session.stt, session.llm, session.tts) for e in _fallbacks(model)),
            key=lambda e: e.at,
        )
        usage = session.usage

    report = CallReport(
        input=input_name,
        caller_audio_s=round(caller_audio_s, 3),
        call_duration_s=round(time.time() - t0, 3),
        stack=stack,
        call_id=call.call_id,
        agent=profile.name,
        admission=decision.status,
        refusal_reason=decision.reason,
        status=call.status,
        recording=str(call.recording.path) if call.recording else None,
    )
    collector.fill(report, t0)
    report.fallback_events = [event.as_dict() for event in fallbacks]
    report.usage = usage_totals(usage)
    if settings.sidecar_url:
        report.billing_events_pending = await deliver_outbox(settings)
    return report, speaker.render(t0)


def _chain_label(model: Any) -> str:
    """A chain's tiers in order (``a -> b -> c``), else the model's label."""
    if isinstance(model, (STTChain, LLMChain, TTSChain)):
        return " -> ".join(tier.label for tier in model.tiers)
    return model.label if model is not None else ""


def _fallbacks(model: Any) -> list[FallbackEvent]:
    chains = (STTChain, LLMChain, TTSChain)
    return list(model.fallback_events) if isinstance(model, chains) else []


async def _press_keys(call: Call, presses: list[KeyPresses]) -> None:
    """The caller's keypad, on the call's timeline (one key every 0.2 s)."""
    for press in sorted(presses, key=lambda p: p.at_s):
        await asyncio.sleep(max(0.0, call.session_started_at + press.at_s - time.time()))
        for key in press.keys:
            call.press(key)
            await asyncio.sleep(KEY_INTERVAL_S)


def _observe(session: Any, collector: _EventCollector, activity: _ActivityTracker) -> None:
    collector.attach(session)
    activity.attach(session)


async def deliver_outbox(settings: Settings, *, max_rounds: int = 5) -> int:
    """Deliver what the outbox holds to the sidecar now (a simulated call has no worker
    whose link would); returns how many events are still pending."""
    outbox = Outbox(settings.outbox_path)
    client = SidecarClient.from_settings(settings)
    sender = OutboxSender(outbox, client)
    try:
        for _ in range(max_rounds):
            if outbox.pending_count() == 0 or await sender.deliver_once() == 0:
                break
        return outbox.pending_count()
    finally:
        await client.aclose()
        outbox.close()


async def _first(*waits: Any, timeout_s: float) -> None:
    """Wait until the first of ``waits`` is done, or ``timeout_s``."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _wait_until_quiet(
    call: Call, activity: _ActivityTracker, opts: SimulationOptions
) -> None:
    session = call.session
    assert session is not None
    deadline = time.monotonic() + opts.max_tail_s
    while time.monotonic() < deadline and not call.ended.is_set():
        busy = session.user_state == "speaking" or session.agent_state in ("thinking", "speaking")
        idle_s = time.monotonic() - activity.last_activity
        # speech whose transcript has not arrived yet may still start a reply
        needed_s = opts.transcript_timeout_s if activity.awaiting_transcript else opts.quiet_after_s
        if not busy and idle_s >= needed_s:
            return
        await asyncio.sleep(0.05)
    log.warning("call still busy %.0f s after the caller's audio ended", opts.max_tail_s)


class _ActivityTracker:
    """When anything last happened in the session, and whether caller speech is still
    waiting for its transcript."""

    def __init__(self) -> None:
        self.last_activity = time.monotonic()
        self.awaiting_transcript = False

    def attach(self, session: Any) -> None:
        # not usage updates: streaming STT reports usage every few seconds of audio, even
        # of silence
        session.on("agent_state_changed", self._touch)
        session.on("conversation_item_added", self._touch)
        session.on("user_state_changed", self._on_user_state)
        session.on("user_input_transcribed", self._on_transcript)

    def _touch(self, _ev: object = None) -> None:
        self.last_activity = time.monotonic()

    def _on_user_state(self, ev: events.UserStateChangedEvent) -> None:
        self._touch()
        # set when speech starts: its final transcript may arrive before or after the
        # VAD reports the end of speech
        if ev.new_state == "speaking":
            self.awaiting_transcript = True

    def _on_transcript(self, ev: events.UserInputTranscribedEvent) -> None:
        self._touch()
        if ev.is_final:
            self.awaiting_transcript = False


class _EventCollector:
    """Listens to the session's events; turns them into the report's sections."""

    def __init__(self) -> None:
        self.messages: list[llm.ChatMessage] = []
        self.tool_calls: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def attach(self, session: Any) -> None:
        session.on("conversation_item_added", self._on_item)
        session.on("function_tools_executed", self._on_tools)
        session.on("error", self._on_error)

    def _on_item(self, ev: events.ConversationItemAddedEvent) -> None:
        if isinstance(ev.item, llm.ChatMessage) and ev.item.role in ("user", "assistant"):
            self.messages.append(ev.item)

    def _on_tools(self, ev: events.FunctionToolsExecutedEvent) -> None:
        for call, output in ev.zipped():
            self.tool_calls.append(
                {
                    "name": call.name,
                    "arguments": json.loads(call.arguments or "{}"),
                    "output": output.output if output else None,
                    "is_error": output.is_error if output else None,
                }
            )

    def _on_error(self, ev: events.ErrorEvent) -> None:
        self.errors.append(f"{type(ev.error).__name__}: {ev.error}")

    def fill(self, report: CallReport, t0: float) -> None:
        def rel(t: float | None) -> float | None:
            return round(t - t0, 3) if t is not None else None

        def r(v: float | None) -> float | None:
            return round(v, 3) if v is not None else None

        last_user: llm.ChatMessage | None = None
        for msg in self.messages:
            m = msg.metrics or {}
            role = "caller" if msg.role == "user" else "agent"
            report.transcript.append(
                Utterance(
                    role=role,
                    text=msg.text_content or "",
                    start_s=rel(m.get("started_speaking_at")),
                    end_s=rel(m.get("stopped_speaking_at")),
                    interrupted=bool(msg.interrupted),
                )
            )
            if msg.role == "user":
                last_user = msg
                continue
            if last_user is None:
                continue  # the greeting answers nobody
            um = last_user.metrics or {}
            report.turns.append(
                TurnLatency(
                    caller_text=last_user.text_content or "",
                    agent_text=msg.text_content or "",
                    end_of_speech_to_first_audio_s=r(m.get("e2e_latency")),
                    end_of_utterance_delay_s=r(um.get("end_of_turn_delay")),
                    stt_delay_s=r(um.get("transcription_delay")),
                    llm_first_token_s=r(m.get("llm_node_ttft")),
                    tts_first_byte_s=r(m.get("tts_node_ttfb")),
                )
            )
            last_user = None
        report.tool_calls = self.tool_calls
        report.errors = self.errors


def write_agent_audio(
    path: Path, pcm: np.ndarray, sample_rate_hz: int = AGENT_SAMPLE_RATE_HZ
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), pcm, sample_rate_hz, subtype="PCM_16")
