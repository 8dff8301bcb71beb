"""Warm transfer (agent.warm_transfer): the person is dialled into a consult room through
the real ``livekit-api`` client and the loopback LiveKit server, briefed, and moved into
the caller's room only when they press 1. The consult room's audio and keys are a fake
leg (no LiveKit server here); :class:`RoomConsultLeg` speaks with a real audio source."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_asyncio
from livekit import api, rtc

from agent.telephony import PhoneLine
from agent.warm_transfer import (
    CONNECTING_LINE,
    DECLINED_LINE,
    PERSON_IDENTITY,
    PROMPT,
    RoomConsultLeg,
    WarmTransfer,
    briefing,
)
from plugins.circuit_breaker import CircuitBreaker
from tests.fake_room import FakeConsultJoiner, FakeRoom, loopback_api, loopback_outbound_trunk
from tests.loopback.livekit_server import LiveKitServer

PERSON = "+15550109999"
BRIEFING = "This is the desk assistant with a caller who asked for a person."


@pytest_asyncio.fixture
async def lkapi(livekit_server: LiveKitServer) -> AsyncIterator[api.LiveKitAPI]:
    client = loopback_api(livekit_server)
    yield client
    await client.aclose()


async def transfer_to(
    lkapi: api.LiveKitAPI, keys: list[str], *, breaker: CircuitBreaker | None = None
) -> tuple[WarmTransfer, FakeConsultJoiner]:
    joiner = FakeConsultJoiner(keys)
    room = FakeRoom("call-room-3")
    trunk = await loopback_outbound_trunk(lkapi)
    line = PhoneLine(lkapi, room.name, "sip-caller", room.local_participant,
                     breaker or CircuitBreaker("sip/test"), outbound_trunk_id=trunk,
                     consult=joiner)  # fmt: skip
    tts: Any = None  # the fake leg does not speak
    return WarmTransfer(line, PERSON, tts, ringing_timeout_s=20, answer_wait_s=0.05), joiner


async def test_the_person_is_briefed_then_moved_into_the_callers_room(lkapi, livekit_server):
    transfer, joiner = await transfer_to(lkapi, ["1"])
    assert await transfer.run(BRIEFING) == "transferred"

    [leg] = joiner.legs
    assert leg.room_name == "call-room-3-consult"
    assert leg.said == [f"{BRIEFING} {PROMPT}", CONNECTING_LINE] and leg.closed
    [dial] = livekit_server.calls("SIP/CreateSIPParticipant")
    assert dial.sip_call_to == PERSON and dial.room_name == "call-room-3-consult"
    assert dial.participant_identity == PERSON_IDENTITY and dial.wait_until_answered
    assert dial.ringing_timeout.seconds == 20
    [move] = livekit_server.calls("RoomService/MoveParticipant")
    assert (move.room, move.identity, move.destination_room) == (
        "call-room-3-consult", PERSON_IDENTITY, "call-room-3")  # fmt: skip
    # the consult room is closed after the move; the caller's room is left alone
    assert [r.room for r in livekit_server.calls("RoomService/DeleteRoom")] == [
        "call-room-3-consult"
    ]
    assert livekit_server.writes.index("RoomService/MoveParticipant") < livekit_server.writes.index(
        "RoomService/DeleteRoom"
    )


async def test_keys_other_than_1_and_2_are_not_an_answer(lkapi, livekit_server):
    transfer, joiner = await transfer_to(lkapi, ["5", "#", "1"])
    assert await transfer.run(BRIEFING) == "transferred"
    assert joiner.legs[0].said == [f"{BRIEFING} {PROMPT}", CONNECTING_LINE]


async def test_a_person_who_declines_is_thanked_and_the_caller_stays(lkapi, livekit_server):
    transfer, joiner = await transfer_to(lkapi, ["2"])
    assert await transfer.run(BRIEFING) == "declined"
    assert joiner.legs[0].said == [f"{BRIEFING} {PROMPT}", DECLINED_LINE]
    assert livekit_server.calls("RoomService/MoveParticipant") == []
    assert [r.room for r in livekit_server.calls("RoomService/DeleteRoom")] == [
        "call-room-3-consult"
    ]


async def test_a_person_who_presses_nothing_hears_the_prompt_twice(lkapi, livekit_server):
    transfer, joiner = await transfer_to(lkapi, [])
    assert await transfer.run(BRIEFING) == "unanswered"
    assert joiner.legs[0].said == [f"{BRIEFING} {PROMPT}", PROMPT, DECLINED_LINE]
    assert livekit_server.calls("RoomService/MoveParticipant") == []


async def test_a_busy_person_is_not_briefed(lkapi, livekit_server):
    livekit_server.options.sip_status = (486, "Busy Here")
    breaker = CircuitBreaker("sip/test")
    transfer, joiner = await transfer_to(lkapi, ["1"], breaker=breaker)
    assert await transfer.run(BRIEFING) == "rejected"
    assert joiner.legs[0].said == [] and joiner.legs[0].closed
    assert livekit_server.calls("RoomService/DeleteRoom")  # the consult room goes
    assert breaker.allow(), "a busy line is the far end's answer, not a SIP fault"


async def test_a_server_without_move_participant_fails_and_tells_the_person(lkapi, livekit_server):
    livekit_server.options.without = frozenset({"RoomService/MoveParticipant"})
    transfer, joiner = await transfer_to(lkapi, ["1"])
    assert await transfer.run(BRIEFING) == "failed"
    assert joiner.legs[0].said[-1].startswith("Sorry, the caller could not be connected")
    assert [r.room for r in livekit_server.calls("RoomService/DeleteRoom")] == [
        "call-room-3-consult"
    ]


async def test_an_open_breaker_does_not_dial(lkapi, livekit_server):
    breaker = CircuitBreaker("sip/test")
    for _ in range(5):
        breaker.record_failure()
    transfer, joiner = await transfer_to(lkapi, ["1"], breaker=breaker)
    assert await transfer.run(BRIEFING) == "breaker_open"
    assert livekit_server.calls("SIP/CreateSIPParticipant") == []


def test_the_briefing_is_the_callers_own_words():
    lines = ["hi", "my internet is down", "I want a person"]
    text = briefing("Front desk", "I want a person", lines)
    assert text == (
        "This is the Front desk assistant with a caller who asked for a person. They said: "
        "I want a person. Before that: hi ... my internet is down."
    )
    long = "word " * 100
    clipped = briefing("Desk", long, [])
    assert clipped.endswith("word....") and len(clipped) < 300
    assert briefing("Desk", "  ", []) == (
        "This is the Desk assistant with a caller who asked for a person."
    )


async def test_the_room_leg_speaks_with_the_call_voice_and_hears_keys():
    from plugins.local_tts import PiperOptions, PiperTTS

    tts = PiperTTS(PiperOptions.bundled(noise_scale=0.0, noise_w_scale=0.0))
    room = FakeRoom("call-room-3-consult")
    source = rtc.AudioSource(tts.sample_rate, tts.num_channels)
    leg = RoomConsultLeg(room, source, tts)  # type: ignore[arg-type]
    await leg.say("Press 1.")
    assert source.queued_duration == 0.0  # played out
    room.press("1")
    assert await leg.next_key(1.0) == "1"
    assert await leg.next_key(0.01) is None
    await leg.aclose()
    assert room.disconnected
    room.press("2")  # after closing: not heard, no error
