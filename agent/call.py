"""One call: the only place a call identity, an admission decision and an agent profile
become a running session. The worker's job (a room, console included) and ``simulate``
(a recording) both run calls through :class:`Call`.

    identity + decision + profile
        -> Call.start: session (agent.pipeline: the STT, LLM and TTS chains)
                       + ProfileAgent (greets on enter, or picks up a kept conversation:
                         agent.continuity; the confidence gate and backchannels in its
                         STT node) + barge-in policy (agent.interruption) + echo
                       canceller (agent.echo) + keypad (agent.dtmf)
                       + meter (usage -> outbox) + lease keeper (heartbeats)
        -> ... the conversation ...
        -> Call.aclose, on every exit (hang-up, end_call, transfer, error, shutdown), in
           this order: stop speaking and close the session, keep the conversation (unless
           the agent said goodbye or handed the caller over), final usage -> outbox (with
           the call's end), release the lease, close the models and the sidecar client,
           hang up a phone caller (agent.telephony) unless they were transferred.

A refused call is still a call: the caller hears why (uninterruptible) and it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from livekit import rtc
from livekit.agents import Agent, AgentSession, llm, vad
from livekit.agents.voice import events
from livekit.agents.voice.io import AudioInput, AudioOutput

from agent import metrics as call_metrics
from agent.admission import AdmissionDecision, CallIdentity, LeaseKeeper
from agent.continuity import conversation_key, conversations_for
from agent.dtmf import DtmfCollector
from agent.echo import EchoCanceller
from agent.hold import HoldQueueWait, play_hold_music
from agent.interruption import InterruptionPolicy
from agent.logs import call_id_var, mask_phone
from agent.metering import CallMeter
from agent.outbox import Outbox
from agent.pipeline import build_session, build_tts, phrasebook, stage_settings
from agent.profile import REPEAT_LINE
from agent.recording import CallRecorder, RecordingSummary, recording_path
from agent.settings import Settings
from agent.sidecar_client import SidecarClient
from agent.telephony import PhoneLine
from agent.tools import CallTools, ProfileAgent
from billing.agent_profile import AgentProfile
from billing.internal_api import caller_number_hash
from billing.pricing import CallFacts
from plugins.confidence_gate import ConfidenceGate

log = logging.getLogger("agent.call")

METERED = ("admitted", "unleased")
"""Decisions whose calls are billed (``unmetered``: no sidecar; ``refused``: not taken)."""


class Call:
    """A call from admission to teardown. Owns its session, models, meter, lease keeper
    and sidecar client; :meth:`aclose` is safe to call more than once and from any exit
    path."""

    def __init__(
        self,
        identity: CallIdentity,
        decision: AdmissionDecision,
        profile: AgentProfile,
        *,
        settings: Settings,
        vad_model: vad.VAD,
        sidecar: SidecarClient | None = None,
        caller_number: str | None = None,
        sip_call_id: str | None = None,
        direction: Literal["inbound", "outbound"] | None = None,
        line: PhoneLine | None = None,
        on_ended: Callable[[str], None] | None = None,
    ) -> None:
        self.identity = identity
        self.decision = decision
        self.profile = profile
        self._settings = settings
        self._vad = vad_model
        self._sidecar = sidecar
        self.caller_number_masked = mask_phone(caller_number) if caller_number else None
        secret = settings.caller_id_secret.get_secret_value()
        self.caller_number_hash = (
            caller_number_hash(secret, caller_number) if caller_number and secret else None
        )
        self.sip_call_id = sip_call_id
        self.direction = direction
        """A phone call's (the call row's); None for a browser or simulated call."""
        self._conversation_key = conversation_key(
            str(decision.agent_id or profile.name), caller_number
        )
        self.line = line
        """A phone caller's line (transfer, keys out, hang-up); None for anyone else."""
        self._on_ended = on_ended
        """Told the final status once the call has ended (the worker shuts its job down)."""
        self.started_at = time.time()
        self._started_monotonic = time.monotonic()
        """The billed call time runs from here, the row's ``started_at``."""
        self.session_started_at = self.started_at
        """When the session started (models built): the origin of the call's timeline."""
        self.session: AgentSession | None = None
        self.agent: Agent | None = None
        self._meter: CallMeter | None = None
        self._outbox: Outbox | None = None
        self._keeper: LeaseKeeper | None = None
        self._keeper_task: asyncio.Task[None] | None = None
        self._closing: asyncio.Task[None] | None = None
        self._phrases_task: asyncio.Task[None] | None = None
        self._holding: asyncio.Task[AdmissionDecision] | None = None
        self._recorder: CallRecorder | None = None
        self.recording: RecordingSummary | None = None
        """The call's recording once it ended (``RECORD_CALLS``), else None."""
        self.interruptions: InterruptionPolicy | None = None
        self.keypad: DtmfCollector | None = None
        self._keypad_source: rtc.EventEmitter[Any] | None = None
        self.status: str | None = None
        self._counted = False
        """Counted in the calls-active gauge (a refused call never is)."""
        self.ended = asyncio.Event()
        """Set once :meth:`aclose` has finished."""

    @property
    def call_id(self) -> str:
        return self.identity.call_id

    @property
    def transferred(self) -> bool:
        """The caller was handed to a person: their leg lives on without us."""
        return isinstance(self.agent, ProfileAgent) and self.agent.call_tools.transferred

    def facts(self) -> CallFacts:
        """What the billing events say of this call (its row in the sidecar's ``calls``)."""
        return CallFacts(
            started_at=self.started_at,
            caller_number_masked=self.caller_number_masked,
            dialled_number=self.identity.dialled_number,
            caller_number_hash=self.caller_number_hash,
            sip_call_id=self.sip_call_id,
            direction=self.direction,
        )

    async def start(
        self,
        *,
        room: rtc.Room | None = None,
        audio_input: AudioInput | None = None,
        audio_output: AudioOutput | None = None,
        greet: bool = True,
        observe: Callable[[AgentSession], None] | None = None,
        keypad: rtc.EventEmitter[Any] | None = None,
    ) -> None:
        """Build and start the session: in ``room``, or on the given audio (``simulate``).
        ``observe`` is given the session before it starts (to listen to its events).
        ``keypad``: where the caller's keys come from (``sip_dtmf_received``), ``room``
        unless given. A refused call says why and ends here."""
        call_id_var.set(self.call_id)
        if self.decision.status == "queued":
            self._holding = asyncio.create_task(
                self._hold(room, audio_output, observe), name="on-hold"
            )
            try:
                self.decision = await self._holding
            except asyncio.CancelledError:
                if self._closing is not None:
                    return  # the caller hung up on hold: the call is closed already
                raise
            # billed from admission on, not from the time on hold
            self.started_at, self._started_monotonic = time.time(), time.monotonic()
        if self.decision.refused:
            await self._refuse(room, audio_input, audio_output, observe)
            return
        self.session = session = build_session(self._settings, self._vad, self.profile)
        self.interruptions = InterruptionPolicy(confirm_s=self._settings.interrupt_confirm_s)
        self.interruptions.attach(session)
        gate = ConfidenceGate(
            self._settings.stt_min_confidence,
            misses_before_keypad=self._settings.stt_misses_before_keypad,
        )
        self.keypad = DtmfCollector(self._keypad_entry, timeout_s=self._settings.dtmf_timeout_s)
        self._keypad_source = keypad or room
        if self._keypad_source is not None:
            self._keypad_source.on("sip_dtmf_received", self._on_dtmf)
        self.agent = ProfileAgent(
            self.profile,
            tools=CallTools(self.profile, line=self.line),
            greet=greet,
            interruptions=self.interruptions,
            gate=gate,
            history=await asyncio.to_thread(self._kept_conversation),
        )
        self._start_metering(session)
        self._start_lease_keeping()
        self._start_recording()
        session.on("close", self._on_session_close)
        call_metrics.watch_session(session)
        call_metrics.call_started()
        self._counted = True
        await self._start_session(self.agent, room, audio_input, audio_output, observe)
        self._phrases_task = asyncio.create_task(self._prepare_phrases(), name="phrasebook")
        log.info(
            "call started",
            extra={
                "agent": self.profile.name,
                "agent_id": self.decision.agent_id,
                "admission": self.decision.status,
                "caller": self.caller_number_masked,
                "sip_call_id": self.sip_call_id,
                "direction": self.direction,
                "dialled_number": mask_phone(self.identity.dialled_number or ""),
            },
        )

    async def aclose(self, status: str = "ended") -> None:
        """Tear the call down (see the module docstring for the order). ``status``:
        ``ended`` or ``failed``, what the call's row says; the first close decides."""
        if self._closing is None:
            self._closing = asyncio.create_task(self._teardown(status), name="call-teardown")
        await asyncio.shield(self._closing)

    async def _teardown(self, status: str) -> None:
        self.status = status
        if self._holding is not None and not self._holding.done():
            self._holding.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._holding  # leaves the queue and closes the hold session
        if isinstance(self.agent, ProfileAgent):
            await _step("ending a warm transfer", self.agent.call_tools.aclose())
        session = self.session
        if self._phrases_task is not None:
            self._phrases_task.cancel()
        if self.interruptions is not None:
            self.interruptions.close()
        if self.keypad is not None:
            self.keypad.close()
        if self._keypad_source is not None:
            self._keypad_source.off("sip_dtmf_received", self._on_dtmf)
        # every step runs whatever the one before did: a failed session close must not
        # lose the call's usage, nor a failed flush keep the lease
        if session is not None:
            await _step("stop speaking", _stop_speaking(session))
            if status in ("ended", "failed"):
                await _step("keeping the conversation", self._keep_conversation(session))
        if self._recorder is not None:
            await _step("sealing the recording", self._seal_recording(self._recorder))
        if self._meter is not None:
            await _step("final usage to the outbox", self._meter.close(status=status))
        if self._outbox is not None:
            self._outbox.close()
        if self._keeper is not None:
            await _step("lease release", self._release_lease(self._keeper))
        if session is not None:
            # the session does not own its models: close their connections here
            for model in (session.stt, session.llm, session.tts):
                if model is not None:
                    await _step(f"closing {model.label}", model.aclose())
        if self._sidecar is not None:
            await _step("closing the sidecar client", self._sidecar.aclose())
        if self.line is not None and not self.transferred:
            # the agent ended the call, or it failed: the phone caller is hung up (after
            # the caller hung up this only deletes the empty room)
            await _step("hanging up the phone line", self.line.hang_up())
        duration_s = time.time() - self.started_at
        call_metrics.call_ended(status, duration_s, was_active=self._counted)
        log.info("call ended", extra={"status": status, "duration_s": round(duration_s, 3)})
        self.ended.set()
        if self._on_ended is not None:
            self._on_ended(status)

    async def _release_lease(self, keeper: LeaseKeeper) -> None:
        if self._keeper_task is not None:
            self._keeper_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper_task
        await keeper.release()

    def _on_session_close(self, ev: events.CloseEvent) -> None:
        # the caller hung up, the agent ended the call, or a model failed for good
        status = "failed" if ev.error is not None else "ended"
        if ev.error is not None:
            log.error("call ended by an error", extra={"error": str(ev.error)})
        task = asyncio.get_running_loop().create_task(self.aclose(status))
        task.add_done_callback(_log_failure)

    def _start_metering(self, session: AgentSession) -> None:
        org = self.decision.organisation_id
        if self.decision.status not in METERED or org is None:
            return
        self._outbox = Outbox(self._settings.outbox_path)
        self._meter = CallMeter(
            self._outbox,
            call_id=self.call_id,
            organisation_id=org,
            agent_id=self.decision.agent_id,
            usage=lambda: session.usage,
            call_facts=self.facts,
            started_at=self._started_monotonic,
        )
        self._meter.start()

    def _start_lease_keeping(self) -> None:
        if self._sidecar is None or self.decision.status not in METERED:
            return
        self._keeper = LeaseKeeper(self._sidecar, self.identity, self.decision.lease_id)
        self._keeper_task = asyncio.create_task(self._keeper.run(), name="lease-keeper")

    def _start_recording(self) -> None:
        keyring = self._settings.recording_keyring()  # checked at start-up by the CLI
        if keyring is None:
            return
        path = recording_path(
            self._settings.recordings_dir, self.decision.organisation_id, self.call_id
        )
        self._recorder = CallRecorder(path, keyring)

    async def _seal_recording(self, recorder: CallRecorder) -> None:
        self.recording = await asyncio.to_thread(recorder.close)

    def _kept_conversation(self) -> llm.ChatContext | None:
        """This caller's conversation with this agent, if it dropped in the last 5 minutes
        (blocking: the store is a file or Redis)."""
        if self._conversation_key is None:
            return None
        store = conversations_for(self._settings.redis_url, self._settings.data_dir)
        try:
            items = store.take(self._conversation_key)
            history = llm.ChatContext.from_dict({"items": items}) if items else None
        except Exception as exc:  # a store that is down, or a kept context gone bad
            log.warning("could not pick up the kept conversation", extra={"error": str(exc)})
            return None
        finally:
            store.close()
        if history is not None:
            log.info(
                "the caller is back: picking up the conversation", extra={"items": len(items or [])}
            )
        return history

    async def _keep_conversation(self, session: AgentSession) -> None:
        agent = self.agent
        if self._conversation_key is None or not isinstance(agent, ProfileAgent):
            return
        if agent.call_tools.ended_by_agent or agent.call_tools.transferred:
            return  # the agent said goodbye, or a person took over: the conversation is over
        items = session.history.to_dict(exclude_metrics=True)["items"]
        if not any(item.get("role") == "user" for item in items):
            return  # nothing said: nothing to pick up
        store = conversations_for(self._settings.redis_url, self._settings.data_dir)
        try:
            await asyncio.to_thread(store.keep, self._conversation_key, items)
        finally:
            store.close()

    def press(self, keys: str) -> None:
        """The caller pressed ``keys`` on their keypad (a room's DTMF, ``simulate --dtmf``)."""
        if self.keypad is None:
            return
        for key in keys:
            try:
                self.keypad.press(key)
            except ValueError as exc:
                log.warning("ignored a keypad event", extra={"error": str(exc)})

    def _on_dtmf(self, ev: rtc.SipDTMF) -> None:
        self.press(ev.digit)

    def _keypad_entry(self, digits: str) -> None:
        """A whole keypad entry is the caller's turn; a key the profile maps to an action
        (``telephony.keys``), pressed alone, is that action."""
        session, agent = self.session, self.agent
        if session is None or not isinstance(agent, ProfileAgent):
            return
        action = self.profile.telephony.keys.get(digits)
        # the digits may be private: the count and the mapped action only
        log.info("keypad entry", extra={"digits": len(digits), "action": action})
        session.interrupt()
        if action is None:
            session.generate_reply(user_input=digits)
            return
        tools = agent.call_tools
        if action == "transfer_to_human":
            handle = session.say(tools.hand_over(session, "pressed a key for a person"))
            if tools.transferring:
                handle.add_done_callback(lambda _: tools.transfer_now(session))
        elif action == "end_call":
            tools.ended_by_agent = True
            session.say(self.profile.goodbye).add_done_callback(lambda _: session.shutdown())
        else:  # repeat
            session.say(agent.last_line() or REPEAT_LINE)

    async def _prepare_phrases(self) -> None:
        """Render the last TTS tier's fixed lines once the greeting has been heard (the
        local voice serves one sentence at a time: rendering them first would delay it)."""
        book = phrasebook(self.session.tts) if self.session is not None else None
        if book is None or book.ready:
            return
        if isinstance(self.agent, ProfileAgent):
            await self.agent.greeted.wait()
        try:
            await asyncio.to_thread(book.prepare)
        except Exception:
            log.exception("could not render the fixed lines; the last voice tier has none")

    async def _hold(
        self,
        room: rtc.Room | None,
        audio_output: AudioOutput | None,
        observe: Callable[[AgentSession], None] | None,
    ) -> AdmissionDecision:
        """On hold (agent.hold): the hold message and music on a voice-only session while
        the sidecar keeps the caller's place; the decision the wait ended with."""
        decision = self.decision
        if self._sidecar is None:  # nobody to queue with
            return decision.model_copy(update={"status": "unleased"})
        message = decision.message or "Please hold."  # the sidecar says what to say
        self.session = session = voice_only_session(
            stage_settings(self._settings, self.profile), self.profile, message
        )
        # the caller's voice is not needed on hold: no input, nothing heard
        await self._start_session(Agent(instructions=""), room, None, audio_output, observe)
        music = asyncio.create_task(play_hold_music(session, message), name="hold-music")
        wait = HoldQueueWait(
            self._sidecar,
            self.identity,
            max_wait_s=self._settings.hold_max_wait_s,
            fail_open=self._settings.admission_fail_open,
        )
        try:
            return await wait.wait(decision)
        finally:
            music.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await music
            await _step("closing the hold session", session.aclose())
            self.session = None

    async def _refuse(
        self,
        room: rtc.Room | None,
        audio_input: AudioInput | None,
        audio_output: AudioOutput | None,
        observe: Callable[[AgentSession], None] | None,
    ) -> None:
        self.session = session = voice_only_session(
            stage_settings(self._settings, self.profile), self.profile, self.decision.message or ""
        )
        await self._start_session(Agent(instructions=""), room, audio_input, audio_output, observe)
        await say_refusal(session, self.decision.message or "")
        await self.aclose("refused")

    async def _start_session(
        self,
        agent: Agent,
        room: rtc.Room | None,
        audio_input: AudioInput | None,
        audio_output: AudioOutput | None,
        observe: Callable[[AgentSession], None] | None,
    ) -> None:
        """Start ``self.session`` with ``agent``: in ``room``, or on the given audio."""
        session = self.session
        assert session is not None
        echo = EchoCanceller() if self._settings.echo_cancellation else None
        # the recorder hears the line as it is (before the echo canceller)
        taps: list[EchoCanceller | CallRecorder] = [
            t for t in (self._recorder if agent is self.agent else None, echo) if t is not None
        ]
        if audio_input is not None:
            for tap in taps:
                audio_input = tap.input(audio_input)
            session.input.audio = audio_input
        if audio_output is not None:
            for tap in taps:
                audio_output = tap.output(audio_output)
            session.output.audio = audio_output
        if observe is not None:
            observe(session)
        self.session_started_at = time.time()
        if room is not None:
            await session.start(agent=agent, room=room)
            # the room's own input and output exist once the session has joined
            if session.input.audio and session.output.audio:
                for tap in taps:
                    session.input.audio = tap.input(session.input.audio)
                    session.output.audio = tap.output(session.output.audio)
        else:
            await session.start(agent, record=False)


def voice_only_session(settings: Settings, profile: AgentProfile, message: str) -> AgentSession:
    """A session that only speaks (a refused call, a caller on hold): no STT or LLM, so it
    costs nothing; ``message`` is among the last voice's prepared lines."""
    return AgentSession(tts=build_tts(settings, profile, lines=[message]))


async def say_refusal(session: AgentSession, message: str) -> None:
    """On a started session: say why the call cannot be taken, uninterruptible, and wait
    until it was heard."""
    await session.say(message, allow_interruptions=False).wait_for_playout()


async def _stop_speaking(session: AgentSession) -> None:
    try:
        await session.interrupt(force=True)
    except Exception as exc:  # nothing to interrupt, or never started: close it anyway
        log.debug("nothing to interrupt", extra={"error": str(exc)})
    await session.aclose()


async def _step(what: str, work: Awaitable[None]) -> None:
    try:
        await work
    except Exception:
        log.exception("call teardown step failed; going on", extra={"step": what})


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("call teardown failed", exc_info=task.exception())
