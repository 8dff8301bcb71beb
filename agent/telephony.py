"""A phone caller's line: what a call can ask of LiveKit's SIP service.

:class:`PhoneLine` (one per SIP call) transfers the caller to a person (a SIP REFER through
``transfer_sip_participant``), sends keypad tones to the far end (``publish_dtmf``, for an
IVR that needs them) and hangs up (deletes the room, which ends the SIP leg); for a warm
transfer (``agent.warm_transfer``) it dials a person into a consult room and moves them
into the caller's room.
:func:`place_call` dials out: an agent dispatched to a new room, then the callee added
to it through the outbound trunk, so the call is admitted like an inbound one.

Every LiveKit API operation goes through one process-wide circuit breaker
(``sip/livekit``): after 5 failures within a minute, transfers and dials fail at once with
:class:`SipUnavailable` (``status="breaker_open"``) for 30 s, then one is let through to
probe. A SIP-level refusal (the number is busy, the transfer was rejected) is the far
end's answer, not a fault of the trunk, and does not count against the breaker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc
from livekit.agents.tts import TTS

from agent.logs import mask_phone
from agent.settings import Settings
from plugins.circuit_breaker import CircuitBreaker, breaker_for

if TYPE_CHECKING:
    from agent.warm_transfer import ConsultLeg

log = logging.getLogger("agent.telephony")

DTMF_CODES = {**{str(d): d for d in range(10)}, "*": 10, "#": 11}
"""RFC 4733 event codes of the keypad keys."""
DTMF_GAP_S = 0.25
"""Between two keys sent to the far end (an IVR must hear them as separate presses)."""
DTMF_PAUSE_KEY = "w"
"""In keys to send: wait 0.5 s (e.g. ``"ww1234#"`` after a recorded greeting)."""
DTMF_PAUSE_S = 0.5
E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")

SipStatus = Literal["breaker_open", "rejected", "failed"]


class SipUnavailable(Exception):
    """A transfer or dial that did not happen: ``breaker_open`` (SIP operations keep
    failing; not tried), ``rejected`` (the far end said no, e.g. 486 Busy Here) or
    ``failed`` (the API or trunk failed)."""

    def __init__(self, status: SipStatus, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail


class ConsultJoiner(Protocol):
    """Joins the agent to a warm transfer's consult room (``agent.warm_transfer``)."""

    def __call__(self, room_name: str, tts: TTS) -> Awaitable[ConsultLeg]: ...


class DtmfSender(Protocol):
    """What sends keys into the room: ``rtc.LocalParticipant`` (a fake in tests)."""

    async def publish_dtmf(self, *, code: int, digit: str) -> None: ...


SIP_CALLER_ATTR = "sip.phoneNumber"
SIP_TRUNK_NUMBER_ATTR = "sip.trunkPhoneNumber"
SIP_CALL_ID_ATTR = "sip.callID"


@dataclass(frozen=True)
class SipCaller:
    """The far end of a phone call, from the SIP participant's ``sip.*`` attributes."""

    identity: str
    """The participant's identity in the room (what a transfer names)."""
    number: str | None
    """The caller's number (inbound) or the number called (outbound)."""
    trunk_number: str | None
    """Our number on the trunk: the one dialled (inbound) or shown (outbound)."""
    call_id: str | None
    direction: Literal["inbound", "outbound"]

    @classmethod
    def of(cls, participant: rtc.RemoteParticipant, *, outbound: bool = False) -> SipCaller | None:
        """None for anyone but a SIP participant. Logged with the numbers masked."""
        if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_SIP:
            return None
        attrs = participant.attributes
        caller = cls(
            identity=participant.identity,
            number=attrs.get(SIP_CALLER_ATTR) or None,
            trunk_number=attrs.get(SIP_TRUNK_NUMBER_ATTR) or None,
            call_id=attrs.get(SIP_CALL_ID_ATTR) or None,
            direction="outbound" if outbound else "inbound",
        )
        log.info(
            "sip caller joined",
            extra={
                "caller": mask_phone(caller.number or ""),
                "trunk_number": mask_phone(caller.trunk_number or ""),
                "sip_call_id": caller.call_id,
                "direction": caller.direction,
            },
        )
        return caller


def sip_breaker(settings: Settings) -> CircuitBreaker:
    """The worker process's breaker for LiveKit's SIP and room API at ``LIVEKIT_URL``."""
    return breaker_for("sip/livekit", settings.livekit_url)


def transfer_uri(number: str) -> str:
    """``tel:+15550100`` for an E.164 number; a ``sip:`` or ``tel:`` URI as it is."""
    return number if number.startswith(("sip:", "tel:")) else f"tel:{number}"


T = TypeVar("T")


async def _guarded(breaker: CircuitBreaker, what: str, work: Awaitable[T]) -> T:
    """Run one API operation under the breaker; a SIP refusal is the far end's answer."""
    if not breaker.allow():
        log.warning(
            "SIP operations are failing; not trying",
            extra={"operation": what, "open_for_s": round(breaker.open_for_s, 1)},
        )
        if asyncio.iscoroutine(work):
            work.close()  # never awaited: not started
        raise SipUnavailable("breaker_open", "SIP operations keep failing; tried again shortly")
    try:
        result = await work
    except api.SipCallError as exc:
        breaker.record_success()  # the trunk works: the far end refused
        raise SipUnavailable("rejected", str(exc)) from None
    except api.ServerError as exc:
        if 400 <= exc.status < 500 and exc.status != 429:
            breaker.record_success()  # our request was wrong; the service is up
            raise SipUnavailable("failed", str(exc)) from None
        breaker.record_failure()
        raise SipUnavailable("failed", str(exc)) from None
    except Exception as exc:  # refused connection, timeout
        breaker.record_failure()
        raise SipUnavailable("failed", f"{type(exc).__name__}: {exc}") from None
    breaker.record_success()
    return result


@dataclass
class PhoneLine:
    """One SIP caller in one room."""

    lkapi: api.LiveKitAPI
    room_name: str
    caller_identity: str
    """The SIP participant's identity in the room."""
    dtmf: DtmfSender
    breaker: CircuitBreaker
    dtmf_gap_s: float = DTMF_GAP_S
    outbound_trunk_id: str = ""
    """``SIP_OUTBOUND_TRUNK_ID``: what a warm transfer dials the person through."""
    consult: ConsultJoiner | None = None
    """How the agent joins a warm transfer's consult room (``agent.warm_transfer``);
    None: transfers are cold."""

    @property
    def warm_transfers(self) -> bool:
        """Whether this line can brief a person before handing the caller over."""
        return bool(self.outbound_trunk_id) and self.consult is not None

    async def transfer(self, number: str) -> None:
        """Hand the caller to ``number`` (E.164 or a SIP URI); their leg leaves this room
        when the far end answers. Raises :class:`SipUnavailable`."""
        log.info("transferring the caller", extra={"to": mask_phone(number)})
        request = api.TransferSIPParticipantRequest(
            room_name=self.room_name,
            participant_identity=self.caller_identity,
            transfer_to=transfer_uri(number),
            play_dialtone=True,
        )
        await _guarded(self.breaker, "transfer", self.lkapi.sip.transfer_sip_participant(request))
        log.info("caller transferred", extra={"to": mask_phone(number)})

    async def send_keys(self, keys: str) -> None:
        """Play ``keys`` (0-9, ``*``, ``#``; ``w`` waits 0.5 s) to the far end, one after
        another. Raises ``ValueError`` before sending anything if a key is not one."""
        bad = [k for k in keys if k not in DTMF_CODES and k != DTMF_PAUSE_KEY]
        if bad or not keys:
            raise ValueError(f"keys are 0-9, *, # and w (a pause); got {keys!r}")
        for i, key in enumerate(keys):
            if key == DTMF_PAUSE_KEY:
                await asyncio.sleep(DTMF_PAUSE_S)
                continue
            if i and self.dtmf_gap_s:
                await asyncio.sleep(self.dtmf_gap_s)
            await self.dtmf.publish_dtmf(code=DTMF_CODES[key], digit=key)
        log.info("keys sent to the far end", extra={"keys": len(keys)})

    async def hang_up(self) -> None:
        """End the call for everyone in it: delete the room (the SIP leg goes with it)."""
        await self.close_room(self.room_name)

    async def close_room(self, room_name: str) -> None:
        """Delete ``room_name``: everyone in it is disconnected, a SIP leg hung up."""
        await _guarded(
            self.breaker,
            "hang up",
            self.lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name)),
        )

    async def dial(
        self, number: str, *, room_name: str, identity: str, ringing_timeout_s: float
    ) -> str:
        """Call ``number`` into ``room_name`` through the outbound trunk; returns the SIP
        call id once they answer. Raises :class:`SipUnavailable` (busy, no answer)."""
        log.info("dialling", extra={"to": mask_phone(number), "room": room_name})
        request = _dial_request(
            self.outbound_trunk_id, number, room_name, identity, ringing_timeout_s
        )
        info = await _guarded(self.breaker, "dial", self.lkapi.sip.create_sip_participant(request))
        return str(info.sip_call_id)

    async def bring_in(self, identity: str, *, from_room: str) -> None:
        """Move participant ``identity`` from ``from_room`` into the caller's room (a warm
        transfer's person, once briefed). LiveKit Cloud and private deployments have
        ``MoveParticipant``; where the server lacks it this raises ``failed``."""
        request = api.MoveParticipantRequest(
            room=from_room, identity=identity, destination_room=self.room_name
        )
        await _guarded(self.breaker, "move", self.lkapi.room.move_participant(request))


@dataclass(frozen=True)
class PlacedCall:
    room_name: str
    participant_identity: str
    sip_call_id: str


async def place_call(
    lkapi: api.LiveKitAPI,
    settings: Settings,
    number: str,
    *,
    agent_id: int | None = None,
    organisation_id: int | None = None,
    breaker: CircuitBreaker | None = None,
    ringing_timeout_s: float = 30.0,
) -> PlacedCall:
    """Call ``number`` (E.164) through ``SIP_OUTBOUND_TRUNK_ID``: the worker named
    ``AGENT_NAME`` is dispatched to a new room (its job is admitted like an inbound call,
    with this metadata), then the callee is dialled into that room. Returns once they
    answer; raises :class:`SipUnavailable` (busy, no answer, trunk down) after deleting
    the room, or ``ValueError`` for a bad number or missing settings."""
    if not E164.match(number):
        raise ValueError(f"not an E.164 number (+ and 7 to 15 digits): {mask_phone(number)!r}")
    if not settings.sip_outbound_trunk_id:
        raise ValueError(
            "SIP_OUTBOUND_TRUNK_ID is not set (python agent.py provision-sip prints it)"
        )
    breaker = breaker or sip_breaker(settings)
    room_name = f"call-out-{uuid.uuid4().hex[:12]}"
    identity = f"sip-out-{uuid.uuid4().hex[:8]}"
    # no "dialled_number": admission reads that as the number a caller dialled to reach
    # an agent (and its per-number limit); the callee is the SIP participant's own number
    metadata: dict[str, object] = {"direction": "outbound"}
    if agent_id is not None:
        metadata["agent_id"] = agent_id
    if organisation_id is not None:
        metadata["organisation_id"] = organisation_id
    await _guarded(
        breaker,
        "dispatch",
        lkapi.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=settings.agent_name, room=room_name, metadata=json.dumps(metadata)
            )
        ),
    )
    log.info("dialling", extra={"to": mask_phone(number), "room": room_name})
    request = _dial_request(
        settings.sip_outbound_trunk_id, number, room_name, identity, ringing_timeout_s
    )
    try:
        info = await _guarded(breaker, "dial", lkapi.sip.create_sip_participant(request))
    except SipUnavailable:
        try:  # the agent's job goes with its room
            await lkapi.room.delete_room(api.DeleteRoomRequest(room=room_name))
        except Exception as exc:
            log.warning("could not delete the unanswered call's room", extra={"error": str(exc)})
        raise
    log.info("callee answered", extra={"room": room_name, "sip_call_id": info.sip_call_id})
    return PlacedCall(room_name, identity, info.sip_call_id)


def _dial_request(
    trunk_id: str, number: str, room_name: str, identity: str, ringing_timeout_s: float
) -> api.CreateSIPParticipantRequest:
    """A call to ``number`` that the API answers once it is picked up."""
    return api.CreateSIPParticipantRequest(
        sip_trunk_id=trunk_id,
        sip_call_to=number,
        room_name=room_name,
        participant_identity=identity,
        wait_until_answered=True,
        ringing_timeout=_duration(ringing_timeout_s),
    )


def _duration(seconds: float) -> Duration:
    value = Duration()
    value.FromTimedelta(timedelta(seconds=seconds))
    return value
