"""The function tools the worker offers, and the agent a profile becomes.

:class:`CallTools` implements every name in ``billing.agent_profile.TOOL_NAMES`` (a test
holds the two to each other); a profile grants a subset, and :class:`ProfileAgent` gets
exactly those. The same tools serve every LLM tier: a cloud LLM reads their descriptions,
the embedded dialogue engine calls them by name from the profile's dialogue section.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable

from livekit import rtc
from livekit.agents import Agent, AgentSession, ModelSettings, RunContext, function_tool, llm, stt
from livekit.agents.llm import FunctionTool, RawFunctionTool, find_function_tools

from agent.hold import play_hold_music
from agent.interruption import InterruptionPolicy
from agent.metrics import TRANSFERS
from agent.profile import KEYPAD_LINE, REPEAT_LINE, RESUME_LINE
from agent.support_desk import SupportDesk
from agent.telephony import PhoneLine, SipUnavailable
from agent.warm_transfer import WarmTransfer, briefing
from billing.agent_profile import AgentProfile
from plugins.confidence_gate import ConfidenceGate

log = logging.getLogger("agent.tools")


class CallTools:
    """One call's tools. The support desk's answer from its (demo) back office; ``line``,
    a phone caller's (``agent.telephony``): transfers and keys to the far end."""

    def __init__(
        self,
        profile: AgentProfile,
        desk: SupportDesk | None = None,
        *,
        line: PhoneLine | None = None,
    ) -> None:
        self._profile = profile
        self.desk = desk or SupportDesk()
        self.line = line
        self.ended_by_agent = False
        """The agent hung up after its goodbye (``end_call``)."""
        self.transferred = False
        """The caller was handed to a person (their leg left the call)."""
        self._transfer_reason: str | None = None
        """Why the caller asked for a person, while a transfer is armed or running."""
        self._transfer_task: asyncio.Task[None] | None = None
        self._consulting = False
        """A warm transfer is briefing the person (the caller is on hold)."""

    def granted(self) -> list[FunctionTool | RawFunctionTool]:
        """The tools ``profile.tools`` names, bound to this call."""
        by_name = {tool.info.name: tool for tool in find_function_tools(self)}
        return [by_name[name] for name in self._profile.tools]

    @function_tool
    async def check_outage(self, context: RunContext, area: str) -> str:
        """Check whether there is a known service outage in an area.

        Args:
            area: The caller's town name or five-digit ZIP code.
        """
        return self.desk.check_outage(area)

    @function_tool
    async def lookup_account(self, context: RunContext, account_number: str) -> str:
        """Look up a customer account: holder, plan and status.

        Args:
            account_number: The account number, digits only.
        """
        return self.desk.lookup_account(account_number)

    @function_tool
    async def billing_summary(self, context: RunContext, account_number: str) -> str:
        """Get the balance due, due date and last payment of an account.

        Args:
            account_number: The account number, digits only.
        """
        return self.desk.billing_summary(account_number)

    @function_tool
    async def create_ticket(self, context: RunContext, summary: str) -> str:
        """Open a repair ticket; a technician calls the customer back.

        Args:
            summary: The problem in the caller's words.
        """
        return self.desk.create_ticket(summary)

    @function_tool
    async def transfer_to_human(self, context: RunContext, reason: str) -> str:
        """Transfer the caller to a human agent.

        Args:
            reason: Why the caller wants a person, in their words.
        """
        line = self.hand_over(context.session, reason)
        if self.transferring:
            # the line is this turn's reply: transfer once the caller has heard it
            context.speech_handle.add_done_callback(lambda _: self.transfer_now(context.session))
        return line

    @function_tool
    async def end_call(self, context: RunContext) -> str:
        """End the call once the caller is done (they said goodbye, or have nothing more).
        The agent says goodbye; do not say anything else."""
        # the goodbye is this turn's reply: hang up once it has been heard (a drained
        # shutdown lets it play out); the call object tears the rest down
        self.ended_by_agent = True
        context.speech_handle.add_done_callback(lambda _: context.session.shutdown())
        return self._profile.goodbye

    @function_tool
    async def send_dtmf(self, context: RunContext, keys: str) -> str:
        """Press keys on the phone keypad, for an automated menu at the other end of the
        call (e.g. "press 2 for billing").

        Args:
            keys: The keys to press in order: digits, * and #.
        """
        if self.line is None:
            return "This call has no phone keypad."
        try:
            await self.line.send_keys(keys)
        except ValueError as exc:
            return str(exc)
        return f"Pressed {keys}."

    async def aclose(self) -> None:
        """The call is ending (the caller hung up): a warm transfer still briefing the
        person stops, and its consult room is closed. A cold transfer is left to finish:
        its REFER is the caller's way out."""
        task = self._transfer_task
        if task is not None and not task.done() and self._consulting:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- transfer ---------------------------------------------------------------------

    @property
    def transferring(self) -> bool:
        return self._transfer_reason is not None

    def hand_over(self, session: AgentSession, reason: str) -> str:
        """The caller asked for a person: what to tell them. On a phone line with a
        transfer number, the transfer is armed (:meth:`transfer_now` once the line has
        been heard); otherwise a person calls back (a ticket)."""
        number = self._profile.telephony.transfer_number
        if self.line is None or number is None:
            log.info("transfer requested; a person calls back", extra={"reason": reason})
            TRANSFERS.labels("callback").inc()
            return self.desk.request_callback(reason)
        self._transfer_reason = reason
        return self._profile.telephony.transfer_line

    def transfer_now(self, session: AgentSession) -> None:
        """Transfer the caller (armed by :meth:`hand_over`); once only."""
        if self._transfer_task is None and self._transfer_reason is not None:
            self._transfer_task = asyncio.ensure_future(self._transfer(session))

    async def _transfer(self, session: AgentSession) -> None:
        phone = self._profile.telephony
        number = phone.transfer_number
        assert self.line is not None and number is not None
        reason = self._transfer_reason or ""
        if phone.transfer_mode == "warm" and not self.line.warm_transfers:
            log.warning("warm transfer needs SIP_OUTBOUND_TRUNK_ID; transferring cold")
        if phone.transfer_mode == "warm" and self.line.warm_transfers:
            outcome = await self._warm_transfer(session, number, reason)
        else:
            try:
                await self.line.transfer(number)
                outcome = "transferred"
            except SipUnavailable as exc:
                log.error(
                    "transfer failed; a person calls back",
                    extra={"status": exc.status, "error": exc.detail},
                )
                outcome = exc.status
        TRANSFERS.labels(outcome).inc()
        if outcome == "transferred":
            self.transferred = True
            return
        self.desk.request_callback(reason)
        self._transfer_reason = None
        self._transfer_task = None
        with contextlib.suppress(RuntimeError):  # the call is ending: nobody to tell
            session.say(phone.transfer_failed_line)

    async def _warm_transfer(self, session: AgentSession, number: str, reason: str) -> str:
        """The caller holds (music; what they say is not a turn) while the person is
        briefed; once the person has taken the call the agent leaves it."""
        assert self.line is not None and session.tts is not None
        transfer = WarmTransfer(
            self.line, number, session.tts, self._profile.telephony.transfer_ring_s
        )
        caller_lines = [
            item.text_content or ""
            for item in session.history.items
            if isinstance(item, llm.ChatMessage) and item.role == "user"
        ]
        session.input.set_audio_enabled(False)
        music = asyncio.ensure_future(play_hold_music(session, None))
        self._consulting = True
        try:
            outcome = await transfer.run(briefing(self._profile.name, reason, caller_lines))
        finally:
            self._consulting = False
            music.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await music
        if outcome == "transferred":
            log.info("caller handed to a person after a briefing; the agent leaves")
            session.shutdown()
        else:
            session.input.set_audio_enabled(True)
        return outcome


class ProfileAgent(Agent):
    """The agent a profile describes: its instructions and its granted tools. It greets
    when it enters the session (livekit's ``on_enter``) unless told not to."""

    def __init__(
        self,
        profile: AgentProfile,
        *,
        tools: CallTools | None = None,
        greet: bool = True,
        interruptions: InterruptionPolicy | None = None,
        gate: ConfidenceGate | None = None,
        history: llm.ChatContext | None = None,
    ) -> None:
        self.profile = profile
        self.resumed = history is not None
        """A conversation picked up again (agent.continuity): no greeting, a resume line."""
        self.interruptions = interruptions
        self.gate = gate
        self.call_tools = tools or CallTools(profile)
        self._greet = greet
        self.greeted = asyncio.Event()
        """Set once the greeting has been played out (or cut off), or at once without one."""
        super().__init__(
            instructions=profile.instructions,
            tools=list(self.call_tools.granted()),
            chat_ctx=history,
        )

    async def stt_node(
        self, audio: AsyncIterable[rtc.AudioFrame], model_settings: ModelSettings
    ) -> AsyncIterable[stt.SpeechEvent | str]:
        """livekit's STT node, less what must not commit a turn: a backchannel said over
        the agent (it keeps speaking), and a final transcript under the confidence gate
        (the caller is asked to say it again, after three misses to use the keypad). A
        preflight transcript under the gate is dropped without asking: no reply is drafted
        for it, and its final transcript is judged when it comes."""
        transcripts = (
            stt.SpeechEventType.INTERIM_TRANSCRIPT,
            stt.SpeechEventType.PREFLIGHT_TRANSCRIPT,
            stt.SpeechEventType.FINAL_TRANSCRIPT,
        )
        async for ev in Agent.default.stt_node(self, audio, model_settings):
            if isinstance(ev, stt.SpeechEvent) and ev.type in transcripts and ev.alternatives:
                best = ev.alternatives[0]
                if self.interruptions is not None and self.interruptions.swallow(best.text):
                    continue
                if (
                    ev.type == stt.SpeechEventType.PREFLIGHT_TRANSCRIPT
                    and self.gate is not None
                    and best.confidence < self.gate.threshold(self._stt_provider())
                ):
                    continue
                final = ev.type == stt.SpeechEventType.FINAL_TRANSCRIPT and best.text.strip()
                if self.gate is not None and final:
                    provider = self._stt_provider()
                    overlapped = self.interruptions is not None and self.interruptions.overlapped
                    if overlapped and best.confidence < self.gate.threshold(provider):
                        continue  # an unclear sound over the agent: no turn, nothing to ask
                    verdict = self.gate.judge(best.confidence, provider)
                    if verdict != "pass":
                        self._ask(KEYPAD_LINE if verdict == "keypad" else REPEAT_LINE)
                        continue
            yield ev

    def _ask(self, line: str) -> None:
        try:
            self.session.say(line)
        except RuntimeError as exc:  # the call is ending: nobody to ask
            log.debug("not asking the caller", extra={"error": str(exc)})

    def _stt_provider(self) -> str:
        model = self.session.stt
        return getattr(model, "serving", "") or (model.provider if model else "")

    def last_line(self) -> str | None:
        """What the agent said last (its newest message), if anything."""
        said = [
            item.text_content
            for item in self.chat_ctx.items
            if isinstance(item, llm.ChatMessage) and item.role == "assistant" and item.text_content
        ]
        return said[-1] if said else None

    def _resume_line(self) -> str:
        """The resume line and the agent's last words again (often a question the caller
        was about to answer; the dialogue engine reads its pending slot from them)."""
        last = self.last_line()
        return f"{RESUME_LINE} {last}" if last else RESUME_LINE

    async def on_enter(self) -> None:
        if not self._greet:
            self.greeted.set()
            return
        handle = self.session.say(self._resume_line() if self.resumed else self.profile.greeting)
        handle.add_done_callback(lambda _: self.greeted.set())
