"""Whole calls on a phone line, without a LiveKit server: the call object runs its real
session (embedded dialogue engine, Piper voice, Silero VAD) on simulated audio, its
caller's keys come from a fake room, and everything it asks of LiveKit goes through the
real ``livekit-api`` client to the loopback server, which records it.

Covered: a key mapped to "a person" and a spoken request both transfer the caller once
the line saying so has been heard; a refused transfer says so and books a callback; the
agent's goodbye hangs the caller up; keys to a far-end menu; a keypad entry that is not
an action is the caller's turn; "repeat" says the last line again; without a phone line
a person calls back. Warm transfers: the caller holds while the person is briefed with
the caller's words, and the agent leaves once the person has taken the call; a declined
one brings the caller back to the agent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agent.admission import AdmissionDecision, CallIdentity
from agent.call import Call
from agent.settings import Settings
from agent.telephony import PhoneLine
from agent.tools import ProfileAgent
from agent.wav_io import CallerAudioInput, CapturedAudioOutput
from billing.agent_profile import AgentProfile
from plugins.circuit_breaker import CircuitBreaker
from tests.conftest import silence
from tests.fake_room import FakeConsultJoiner, FakeRoom, loopback_api, loopback_outbound_trunk
from tests.loopback.livekit_server import LiveKitServer

pytestmark = pytest.mark.slow

TRANSFER_TO = "+15550109999"
PROFILE = AgentProfile.model_validate(
    {
        "name": "Front desk",
        "greeting": "Front desk, how can I help?",
        "goodbye": "Thanks for calling, goodbye.",
        "tools": ["transfer_to_human", "end_call", "send_dtmf"],
        "telephony": {
            "transfer_number": TRANSFER_TO,
            "keys": {"0": "transfer_to_human", "9": "end_call", "5": "repeat"},
        },
        "dialogue": {
            "intents": [
                {"name": "person", "triggers": [r"\bperson\b"], "tool": "transfer_to_human",
                 "fixed_arguments": {"reason": "{utterance}"}},
                {"name": "menu", "triggers": [r"billing menu"], "tool": "send_dtmf",
                 "fixed_arguments": {"keys": "2#"}},
                {"name": "hours", "triggers": [r"\bopen\b"], "reply": "We open at nine."},
            ],
            "fallback_reply": "Sorry, I can only help with our hours.",
        },
    }
)  # fmt: skip


class PhoneCall:
    def __init__(self, call: Call, room: FakeRoom, speaker: CapturedAudioOutput) -> None:
        self.call, self.room, self.speaker = call, room, speaker

    @property
    def said(self) -> list[str]:
        session = self.call.session
        assert session is not None
        return [
            item.text_content or ""
            for item in session.history.items
            if item.type == "message" and item.role == "assistant"
        ]

    @property
    def tools(self) -> Any:
        assert isinstance(self.call.agent, ProfileAgent)
        return self.call.agent.call_tools


async def until(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    for _ in range(int(timeout_s / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting for the call")


@pytest_asyncio.fixture
async def phone_call(
    tmp_path: Path, vad_model: Any, livekit_server: LiveKitServer
) -> AsyncIterator[Callable[..., Any]]:
    made: list[tuple[Call, Any]] = []

    async def make(
        profile: AgentProfile = PROFILE,
        *,
        line: bool = True,
        consult: FakeConsultJoiner | None = None,
    ) -> PhoneCall:
        settings = Settings(_env_file=None, data_dir=tmp_path, aec_warmup_s=0, dtmf_timeout_s=2.0)  # type: ignore[call-arg]
        room = FakeRoom("call-room-7")
        lkapi = loopback_api(livekit_server)
        trunk = await loopback_outbound_trunk(lkapi) if consult else ""
        phone = PhoneLine(lkapi, room.name, "sip-caller", room.local_participant,
                          CircuitBreaker("sip/test"), dtmf_gap_s=0, outbound_trunk_id=trunk,
                          consult=consult) if line else None  # fmt: skip
        decision = AdmissionDecision(status="unmetered")
        call = Call(CallIdentity("call-7", None, None, None), decision, profile,
                    settings=settings, vad_model=vad_model, caller_number="+15557654321",
                    sip_call_id="SCL_7", direction="inbound", line=phone)  # fmt: skip
        speaker = CapturedAudioOutput()
        made.append((call, lkapi))
        await call.start(
            audio_input=CallerAudioInput(silence(1.0)),
            audio_output=speaker,
            greet=False,
            keypad=room,
        )
        return PhoneCall(call, room, speaker)

    yield make
    for call, lkapi in made:
        await call.aclose()
        await lkapi.aclose()


def _transfers(server: LiveKitServer) -> list[Any]:
    return [r for r in server.requests if r.method == "SIP/TransferSIPParticipant"]


async def test_key_0_transfers_the_caller_after_the_line_was_heard(phone_call, livekit_server):
    phone = await phone_call()
    phone.room.press("0#")
    await until(lambda: bool(_transfers(livekit_server)))

    [transfer] = _transfers(livekit_server)
    assert transfer.message.transfer_to == f"tel:{TRANSFER_TO}"
    assert transfer.message.participant_identity == "sip-caller"
    assert transfer.message.room_name == "call-room-7"
    assert phone.said == [PROFILE.telephony.transfer_line]
    heard_until = phone.speaker.segments[-1].played_until
    assert transfer.at >= heard_until - 0.05, "transferred before the caller heard why"
    await until(lambda: phone.call.transferred)

    await phone.call.aclose()
    assert livekit_server.calls("RoomService/DeleteRoom") == [], "a transferred caller was hung up"


async def test_asking_for_a_person_transfers_through_the_tool(phone_call, livekit_server):
    phone = await phone_call()
    phone.call.session.generate_reply(user_input="Can I talk to a person please")
    await until(lambda: bool(_transfers(livekit_server)))
    assert PROFILE.telephony.transfer_line in phone.said
    await until(lambda: phone.call.transferred)


async def test_a_refused_transfer_says_so_and_books_a_callback(phone_call, livekit_server):
    livekit_server.options.sip_status = (486, "Busy Here")
    phone = await phone_call()
    phone.room.press("0#")
    await until(lambda: PROFILE.telephony.transfer_failed_line in phone.said)
    assert not phone.call.transferred
    [(_, summary)] = phone.tools.desk.tickets
    assert summary.startswith("callback:")
    # the caller is still with the agent: pressing 0 again tries again
    livekit_server.options.sip_status = None
    phone.room.press("0#")
    await until(lambda: phone.call.transferred)
    assert len(_transfers(livekit_server)) == 2


async def test_the_goodbye_key_says_goodbye_then_hangs_up(phone_call, livekit_server):
    phone = await phone_call()
    phone.room.press("9#")
    await asyncio.wait_for(phone.call.ended.wait(), timeout=20)
    assert phone.said == [PROFILE.goodbye]
    [hang_up] = [r for r in livekit_server.requests if r.method == "RoomService/DeleteRoom"]
    assert hang_up.message.room == "call-room-7"
    assert hang_up.at >= phone.speaker.segments[-1].played_until - 0.05
    assert phone.call.status == "ended" and phone.call.facts().sip_call_id == "SCL_7"


async def test_the_agent_presses_keys_for_a_far_end_menu(phone_call):
    phone = await phone_call()
    phone.call.session.generate_reply(user_input="go to the billing menu")
    await until(lambda: len(phone.room.local_participant.sent_dtmf) == 2)
    assert phone.room.local_participant.sent_dtmf == [(2, "2"), (11, "#")]


async def test_an_entry_that_is_no_action_is_the_callers_turn(phone_call, livekit_server):
    phone = await phone_call()
    phone.room.press("0123#")  # starts with the transfer key, but is a number
    await until(lambda: len(phone.said) == 1)
    users = [i.text_content for i in phone.call.session.history.items
             if i.type == "message" and i.role == "user"]  # fmt: skip
    assert users == ["0123"] and phone.said == [PROFILE.dialogue.fallback_reply]
    assert _transfers(livekit_server) == []


async def test_the_repeat_key_says_the_last_line_again(phone_call):
    phone = await phone_call()
    phone.call.session.generate_reply(user_input="when are you open")
    await until(lambda: phone.said == ["We open at nine."])
    phone.room.press("5#")
    await until(lambda: phone.said == ["We open at nine."] * 2)


async def test_without_a_phone_line_a_person_calls_back(phone_call, livekit_server):
    phone = await phone_call(line=False)
    phone.room.press("0#")
    await until(lambda: bool(phone.said))
    assert "will call you back" in phone.said[0]
    assert len(phone.tools.desk.tickets) == 1
    assert livekit_server.requests == []


WARM = PROFILE.model_copy(
    update={"telephony": PROFILE.telephony.model_copy(update={"transfer_mode": "warm"})}
)


def _deleted_rooms(server: LiveKitServer) -> list[str]:
    return [r.room for r in server.calls("RoomService/DeleteRoom")]


async def test_a_warm_transfer_briefs_the_person_while_the_caller_holds(phone_call, livekit_server):
    joiner = FakeConsultJoiner()
    phone = await phone_call(WARM, consult=joiner)
    asked = "My internet is down, can I talk to a person please"
    phone.call.session.generate_reply(user_input=asked)
    await until(lambda: bool(joiner.legs) and bool(joiner.legs[0].said))
    [leg] = joiner.legs
    assert f"They said: {asked}." in leg.said[0]
    assert phone.said == [PROFILE.telephony.transfer_line]
    # on hold: music after the line, and the caller's words are not turns
    assert not phone.call.session.input.audio_enabled
    await until(lambda: len(phone.speaker.segments) >= 2)
    assert _transfers(livekit_server) == [], "a warm transfer is no SIP REFER"

    leg.keys.append("1")
    await asyncio.wait_for(phone.call.ended.wait(), timeout=20)
    assert phone.call.transferred
    [move] = livekit_server.calls("RoomService/MoveParticipant")
    assert move.destination_room == "call-room-7"
    assert _deleted_rooms(livekit_server) == ["call-room-7-consult"], "the caller was hung up"
    assert phone.said == [PROFILE.telephony.transfer_line]


async def test_a_declined_warm_transfer_brings_the_caller_back(phone_call, livekit_server):
    joiner = FakeConsultJoiner(["2"])
    phone = await phone_call(WARM, consult=joiner)
    phone.room.press("0#")
    await until(lambda: PROFILE.telephony.transfer_failed_line in phone.said)
    assert not phone.call.transferred and phone.call.session.input.audio_enabled
    [(_, summary)] = phone.tools.desk.tickets
    assert summary.startswith("callback:")
    assert livekit_server.calls("RoomService/MoveParticipant") == []
    # the caller talks to the agent again
    phone.call.session.generate_reply(user_input="when are you open")
    await until(lambda: "We open at nine." in phone.said)


async def test_warm_without_an_outbound_trunk_transfers_cold(phone_call, livekit_server):
    phone = await phone_call(WARM)
    phone.room.press("0#")
    await until(lambda: phone.call.transferred)
    assert len(_transfers(livekit_server)) == 1


async def test_a_caller_who_hangs_up_on_hold_ends_the_warm_transfer(phone_call, livekit_server):
    joiner = FakeConsultJoiner()
    phone = await phone_call(WARM, consult=joiner)
    phone.room.press("0#")
    await until(lambda: bool(joiner.legs) and bool(joiner.legs[0].said))
    await phone.call.aclose()  # the caller hung up while the person was being briefed
    [leg] = joiner.legs
    assert leg.closed
    assert "call-room-7-consult" in _deleted_rooms(livekit_server)
    assert livekit_server.calls("RoomService/MoveParticipant") == []
    assert not phone.call.transferred
