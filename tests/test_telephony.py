"""The phone line (agent.telephony) through the real ``livekit-api`` client against the
loopback LiveKit server: transfers, keys to the far end, hang-up, dialling out, the SIP
circuit breaker, and the SIP participant's attributes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from livekit import api, rtc

from agent.settings import Settings
from agent.telephony import (
    PhoneLine,
    SipCaller,
    SipUnavailable,
    place_call,
    transfer_uri,
)
from plugins.circuit_breaker import CircuitBreaker
from tests.fake_room import FakeRoom, FakeSipParticipant, loopback_api, loopback_outbound_trunk
from tests.loopback.livekit_server import LiveKitServer


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def lkapi(livekit_server: LiveKitServer) -> AsyncIterator[api.LiveKitAPI]:
    client = loopback_api(livekit_server)
    yield client
    await client.aclose()


def new_line(lkapi: api.LiveKitAPI, breaker: CircuitBreaker | None = None) -> PhoneLine:
    room = FakeRoom("call-room-1")
    return PhoneLine(
        lkapi,
        room.name,
        "sip-caller",
        room.local_participant,
        breaker or CircuitBreaker("sip/test"),
        dtmf_gap_s=0,
    )


async def test_a_transfer_names_the_room_the_caller_and_a_tel_uri(lkapi, livekit_server):
    await new_line(lkapi).transfer("+15550109999")
    [request] = livekit_server.calls("SIP/TransferSIPParticipant")
    assert request.room_name == "call-room-1" and request.participant_identity == "sip-caller"
    assert request.transfer_to == "tel:+15550109999" and request.play_dialtone


def test_transfer_targets_keep_a_sip_uri():
    assert transfer_uri("sip:desk@pbx.example.com") == "sip:desk@pbx.example.com"
    assert transfer_uri("+15550100") == "tel:+15550100"


async def test_a_busy_far_end_is_rejected_and_does_not_trip_the_breaker(lkapi, livekit_server):
    livekit_server.options.sip_status = (486, "Busy Here")
    breaker = CircuitBreaker("sip/test", failure_threshold=2)
    line = new_line(lkapi, breaker)
    for _ in range(3):
        with pytest.raises(SipUnavailable) as err:
            await line.transfer("+15550109999")
        assert err.value.status == "rejected" and "486" in err.value.detail
    assert breaker.state == "closed"


async def test_five_failures_open_the_breaker_then_a_probe_after_30_s(lkapi, livekit_server):
    clock = Clock()
    breaker = CircuitBreaker("sip/test", failure_threshold=5, window_s=60, open_s=30, clock=clock)
    line = new_line(lkapi, breaker)
    livekit_server.options.status = 503
    for _ in range(5):
        with pytest.raises(SipUnavailable) as err:
            await line.transfer("+15550109999")
        assert err.value.status == "failed"
    sent = len(livekit_server.requests)
    with pytest.raises(SipUnavailable) as err:
        await line.transfer("+15550109999")
    assert err.value.status == "breaker_open"
    assert len(livekit_server.requests) == sent, "an open breaker must not call the API"

    livekit_server.options.status = None  # the trunk is back
    clock.now += 30.1
    await line.transfer("+15550109999")  # the probe goes through and closes the breaker
    assert breaker.state == "closed"


async def test_an_unreachable_server_fails_fast_with_a_clear_status(livekit_server):
    livekit_server.options.refuse = True
    client = loopback_api(livekit_server)
    try:
        with pytest.raises(SipUnavailable) as err:
            await new_line(client).transfer("+15550109999")
    finally:
        await client.aclose()
    assert err.value.status == "failed" and "ClientConnectorError" in err.value.detail


async def test_a_wrong_api_secret_is_refused_by_the_server(livekit_server):
    client = loopback_api(livekit_server, secret="not-the-secret-of-at-least-32-characters")
    try:
        with pytest.raises(SipUnavailable, match="unauthenticated"):
            await new_line(client).hang_up()
    finally:
        await client.aclose()


async def test_keys_go_to_the_far_end_in_order_as_rfc4733_codes(lkapi):
    room = FakeRoom()
    line = PhoneLine(lkapi, room.name, "sip-caller", room.local_participant,
                     CircuitBreaker("sip/t"), dtmf_gap_s=0)  # fmt: skip
    await line.send_keys("12*#0")
    assert room.local_participant.sent_dtmf == [(1, "1"), (2, "2"), (10, "*"), (11, "#"), (0, "0")]


@pytest.mark.parametrize("keys", ["", "12a", "1 2", "+1", "١"])
async def test_bad_keys_send_nothing(lkapi, keys):
    room = FakeRoom()
    line = PhoneLine(lkapi, room.name, "sip-caller", room.local_participant, CircuitBreaker("s"))
    with pytest.raises(ValueError, match="keys are 0-9"):
        await line.send_keys(keys)
    assert room.local_participant.sent_dtmf == []


async def test_hanging_up_deletes_the_room(lkapi, livekit_server):
    await new_line(lkapi).hang_up()
    [request] = livekit_server.calls("RoomService/DeleteRoom")
    assert request.room == "call-room-1"


# -- dialling out ------------------------------------------------------------------------


def _settings(**kw: object) -> Settings:
    return Settings(_env_file=None, agent_name="voice-agent", **kw)  # type: ignore[call-arg]


async def test_dialling_out_dispatches_the_agent_then_dials_into_its_room(lkapi, livekit_server):
    trunk_id = await loopback_outbound_trunk(lkapi)
    settings = _settings(sip_outbound_trunk_id=trunk_id)
    placed = await place_call(lkapi, settings, "+15557654321", agent_id=7, organisation_id=3,
                              breaker=CircuitBreaker("sip/t"))  # fmt: skip
    assert livekit_server.writes[-2:] == [
        "AgentDispatchService/CreateDispatch",
        "SIP/CreateSIPParticipant",
    ]
    [dispatch] = livekit_server.calls("AgentDispatchService/CreateDispatch")
    assert dispatch.agent_name == "voice-agent" and dispatch.room == placed.room_name
    assert json.loads(dispatch.metadata) == {
        "direction": "outbound",
        "agent_id": 7,
        "organisation_id": 3,
    }
    [dial] = livekit_server.calls("SIP/CreateSIPParticipant")
    assert dial.sip_trunk_id == trunk_id and dial.sip_call_to == "+15557654321"
    assert dial.room_name == placed.room_name and dial.wait_until_answered
    assert placed.sip_call_id.startswith("SCL_")


async def test_a_busy_callee_deletes_the_room_it_made(lkapi, livekit_server):
    settings = _settings(sip_outbound_trunk_id=await loopback_outbound_trunk(lkapi))
    livekit_server.options.sip_status = (486, "Busy Here")
    with pytest.raises(SipUnavailable) as err:
        await place_call(lkapi, settings, "+15557654321", breaker=CircuitBreaker("sip/t"))
    assert err.value.status == "rejected"
    [dispatch] = livekit_server.calls("AgentDispatchService/CreateDispatch")
    [deleted] = livekit_server.calls("RoomService/DeleteRoom")
    assert deleted.room == dispatch.room


@pytest.mark.parametrize("number", ["5557654321", "+0123456789", "+1555", "+1 555 765 4321", ""])
async def test_a_malformed_number_is_refused_before_any_request(lkapi, livekit_server, number):
    settings = _settings(sip_outbound_trunk_id="ST_1")
    with pytest.raises(ValueError, match="E.164"):
        await place_call(lkapi, settings, number, breaker=CircuitBreaker("sip/t"))
    assert livekit_server.requests == []


async def test_dialling_out_without_a_trunk_says_which_setting(lkapi, livekit_server):
    with pytest.raises(ValueError, match="SIP_OUTBOUND_TRUNK_ID"):
        await place_call(lkapi, _settings(), "+15557654321", breaker=CircuitBreaker("sip/t"))
    assert livekit_server.requests == []


# -- who is calling ----------------------------------------------------------------------


def test_a_sip_participant_gives_numbers_call_id_and_direction(caplog):
    participant = FakeSipParticipant(
        "sip_+15557654321",
        {
            "sip.phoneNumber": "+15557654321",
            "sip.trunkPhoneNumber": "+15550142000",
            "sip.callID": "SCL_abc123",
        },
    )
    caplog.set_level("INFO", logger="agent.telephony")
    caller = SipCaller.of(participant)  # type: ignore[arg-type]
    assert caller == SipCaller(
        "sip_+15557654321", "+15557654321", "+15550142000", "SCL_abc123", "inbound"
    )
    [record] = caplog.records
    assert (record.caller, record.trunk_number) == ("+*******4321", "+*******2000")  # masked


def test_a_browser_user_is_not_a_sip_caller():
    user = FakeSipParticipant("web-user", {}, kind=rtc.ParticipantKind.PARTICIPANT_KIND_STANDARD)
    assert SipCaller.of(user) is None  # type: ignore[arg-type]


def test_a_sip_participant_without_attributes_still_has_a_line():
    caller = SipCaller.of(FakeSipParticipant("sip-x", {}), outbound=True)  # type: ignore[arg-type]
    assert caller is not None and caller.number is None and caller.direction == "outbound"
