"""A warm transfer: the agent calls a person first, tells them who is waiting and why, and
hands the caller over only once they take the call.

    caller's room   caller hears hold music; their words are not turns ─────────┐
    consult room    agent joins, dials the person (PhoneLine.dial), briefs them │
                    key 1 ─> "connecting" ─> the person moved in (bring_in) ────┘
                    key 2, no key, no answer, busy ─> the caller hears why; a callback

livekit-agents has ``WarmTransferTask`` for this. We do not use it: it briefs the person
with an LLM and waits for the LLM to call a tool (the embedded stack has no LLM that can),
and it opens its own ``rtc.Room``, so it cannot run at all without a LiveKit server. Here
the briefing is the caller's own words, the person answers with the keypad, and the
consult room is a small protocol (:class:`ConsultLeg`) that tests stand in for.

Moving the person into the caller's room is LiveKit's ``MoveParticipant``, which LiveKit
Cloud and private deployments have (as for ``WarmTransferTask``); on a server without it
the move fails, the person hears so, and the caller gets a callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Protocol

from livekit import api, rtc
from livekit.agents.tts import TTS

from agent.settings import Settings
from agent.telephony import ConsultJoiner, PhoneLine, SipUnavailable

log = logging.getLogger("agent.warm_transfer")

ACCEPT_KEY = "1"
DECLINE_KEY = "2"
PROMPT = "Press 1 to take the call, or 2 if you cannot."
CONNECTING_LINE = "Connecting you now."
DECLINED_LINE = "Thanks, the caller will be called back. Goodbye."
ANSWER_WAIT_S = 15.0
"""How long the person has to press a key after each prompt (the prompt is said twice)."""
PERSON_IDENTITY = "transfer-person"
"""The dialled person's identity, in the consult room and then in the caller's room."""
AGENT_IDENTITY = "voice-agent-consult"
EARLIER_LINES = 2
"""How many of the caller's earlier lines the briefing repeats."""
LINE_CHARS = 200


class ConsultLeg(Protocol):
    """The agent in a consult room: speaks to the person there and hears their keys."""

    async def say(self, text: str) -> None:
        """Speak ``text`` to the person; returns once it has been played."""
        ...

    async def next_key(self, timeout_s: float) -> str | None:
        """The next key the person pressed, or None after ``timeout_s``."""
        ...

    async def aclose(self) -> None: ...


def briefing(agent_name: str, reason: str, caller_lines: list[str]) -> str:
    """What the person hears first: who is calling, in the caller's own words."""

    def quoted(text: str) -> str:
        text = " ".join(text.split())
        return text if len(text) <= LINE_CHARS else text[:LINE_CHARS].rsplit(" ", 1)[0] + "..."

    reason = quoted(reason)
    earlier = [quoted(line) for line in caller_lines if quoted(line) and quoted(line) != reason]
    said = f" They said: {reason}." if reason else ""
    if earlier[-EARLIER_LINES:]:
        said += " Before that: " + " ... ".join(earlier[-EARLIER_LINES:]) + "."
    return f"This is the {agent_name} assistant with a caller who asked for a person.{said}"


@dataclass
class WarmTransfer:
    """One warm transfer of the caller on ``line`` to ``number``."""

    line: PhoneLine
    number: str
    tts: TTS
    """The call's voice, which the person hears too."""
    ringing_timeout_s: float
    answer_wait_s: float = ANSWER_WAIT_S

    @property
    def consult_room(self) -> str:
        return f"{self.line.room_name}-consult"

    async def run(self, briefing_text: str) -> str:
        """Brief the person and hand the caller over if they take the call. Returns the
        outcome, a ``voice_agent_transfers_total`` label: ``transferred``, ``declined``,
        ``unanswered`` (no key pressed), or the :class:`SipUnavailable` status of the dial
        or the move (``rejected``: busy or no answer; ``failed``; ``breaker_open``)."""
        assert self.line.consult is not None, "a warm transfer needs a consult room joiner"
        leg: ConsultLeg | None = None
        answered = False
        try:
            # join first: the person hears the briefing as soon as they pick up
            leg = await self.line.consult(self.consult_room, self.tts)
            await self.line.dial(
                self.number,
                room_name=self.consult_room,
                identity=PERSON_IDENTITY,
                ringing_timeout_s=self.ringing_timeout_s,
            )
            answered = True
            answer = await self._ask(leg, f"{briefing_text} {PROMPT}")
            if answer != ACCEPT_KEY:
                await leg.say(DECLINED_LINE)
                return "declined" if answer == DECLINE_KEY else "unanswered"
            await leg.say(CONNECTING_LINE)
            await self.line.bring_in(PERSON_IDENTITY, from_room=self.consult_room)
            return "transferred"
        except SipUnavailable as exc:
            log.error("warm transfer failed", extra={"status": exc.status, "error": exc.detail})
            if leg is not None and answered:
                with contextlib.suppress(Exception):
                    await leg.say("Sorry, the caller could not be connected. Goodbye.")
            return exc.status
        except Exception:
            log.exception("warm transfer failed")
            return "failed"
        finally:
            if leg is not None:
                with contextlib.suppress(Exception):
                    await leg.aclose()
            with contextlib.suppress(SipUnavailable):  # ends the person's leg if still there
                await self.line.close_room(self.consult_room)

    async def _ask(self, leg: ConsultLeg, text: str) -> str | None:
        """Say ``text``, then the prompt again if no answer; the key that answered."""
        for say in (text, PROMPT):
            await leg.say(say)
            while (key := await leg.next_key(self.answer_wait_s)) is not None:
                if key in (ACCEPT_KEY, DECLINE_KEY):
                    log.info("person answered the transfer", extra={"key": key})
                    return key
        return None


class RoomConsultLeg:
    """A :class:`ConsultLeg` in a LiveKit room: the agent publishes one audio track that
    speaks with the call's TTS, and reads the person's keypad (``sip_dtmf_received``)."""

    def __init__(self, room: rtc.Room, source: rtc.AudioSource, tts: TTS) -> None:
        self._room = room
        self._source = source
        self._tts = tts
        self._keys: asyncio.Queue[str] = asyncio.Queue()
        room.on("sip_dtmf_received", self._on_dtmf)

    def _on_dtmf(self, ev: rtc.SipDTMF) -> None:
        self._keys.put_nowait(ev.digit)

    async def say(self, text: str) -> None:
        async with self._tts.synthesize(text) as stream:
            async for audio in stream:
                await self._source.capture_frame(audio.frame)
        await self._source.wait_for_playout()

    async def next_key(self, timeout_s: float) -> str | None:
        try:
            return await asyncio.wait_for(self._keys.get(), timeout_s)
        except TimeoutError:
            return None

    async def aclose(self) -> None:
        self._room.off("sip_dtmf_received", self._on_dtmf)
        await self._source.aclose()
        await self._room.disconnect()


def room_consult(settings: Settings) -> ConsultJoiner:
    """Joins consult rooms on the LiveKit server at ``LIVEKIT_URL``."""

    async def join(room_name: str, tts: TTS) -> ConsultLeg:
        secret = settings.livekit_api_secret.get_secret_value()
        grants = api.VideoGrants(
            room_join=True, room=room_name, can_publish=True, can_subscribe=True
        )
        token = (
            api.AccessToken(settings.livekit_api_key, secret)
            .with_identity(AGENT_IDENTITY)
            .with_kind("agent")
            .with_grants(grants)
            .to_jwt()
        )
        room = rtc.Room()
        await room.connect(settings.livekit_url, token)
        try:
            source = rtc.AudioSource(tts.sample_rate, tts.num_channels)
            track = rtc.LocalAudioTrack.create_audio_track("consult", source)
            options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
            await room.local_participant.publish_track(track, options)
        except BaseException:
            await room.disconnect()
            raise
        return RoomConsultLeg(room, source, tts)

    return join
