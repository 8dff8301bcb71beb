"""A stand-in for the parts of ``livekit.rtc`` a call touches without a LiveKit server:
a room that emits the caller's keypad events and a local participant that records the
keys it sends. The LiveKit *API* is never faked: tests use the loopback server
(``tests/loopback/livekit_server.py``) through the real ``livekit-api`` client."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from livekit import api, rtc

from tests.loopback.livekit_server import API_KEY, API_SECRET, LiveKitServer


@dataclass
class FakeLocalParticipant:
    sent_dtmf: list[tuple[int, str]] = field(default_factory=list)

    async def publish_dtmf(self, *, code: int, digit: str) -> None:
        self.sent_dtmf.append((code, digit))


class FakeRoom(rtc.EventEmitter[Any]):
    def __init__(self, name: str = "call-room-1") -> None:
        super().__init__()
        self.name = name
        self.local_participant = FakeLocalParticipant()
        self.disconnected = False

    async def disconnect(self) -> None:
        self.disconnected = True

    def press(self, keys: str) -> None:
        """The caller presses ``keys``: one ``sip_dtmf_received`` each, as the SIP service
        sends them."""
        for key in keys:
            self.emit("sip_dtmf_received", rtc.SipDTMF(code=0, digit=key))


@dataclass
class FakeSipParticipant:
    """What ``SipCaller.of`` reads of a ``RemoteParticipant``."""

    identity: str
    attributes: dict[str, str]
    kind: int = rtc.ParticipantKind.PARTICIPANT_KIND_SIP


@dataclass
class FakeConsultLeg:
    """A warm transfer's consult room (``agent.warm_transfer.ConsultLeg``) that records
    what the person was told; ``keys`` is what they press (a test may add keys later)."""

    room_name: str
    keys: list[str] = field(default_factory=list)
    said: list[str] = field(default_factory=list)
    closed: bool = False

    async def say(self, text: str) -> None:
        self.said.append(text)

    async def next_key(self, timeout_s: float) -> str | None:
        for _ in range(max(1, round(timeout_s / 0.01))):
            if self.keys:
                return self.keys.pop(0)
            await asyncio.sleep(0.01)
        return None

    async def aclose(self) -> None:
        self.closed = True


class FakeConsultJoiner:
    """Joins :class:`FakeConsultLeg` s; the person will press ``keys``."""

    def __init__(self, keys: list[str] | None = None) -> None:
        self.keys = keys or []
        self.legs: list[FakeConsultLeg] = []

    async def __call__(self, room_name: str, tts: Any) -> FakeConsultLeg:
        leg = FakeConsultLeg(room_name, list(self.keys))
        self.legs.append(leg)
        return leg


async def loopback_outbound_trunk(lkapi: api.LiveKitAPI) -> str:
    """An outbound trunk on the loopback server; its id."""
    info = api.SIPOutboundTrunkInfo(
        name="out", address="sip.carrier.example", numbers=["+15550142000"]
    )
    trunk = await lkapi.sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=info))
    return trunk.sip_trunk_id


def loopback_api(server: LiveKitServer, *, secret: str = API_SECRET) -> api.LiveKitAPI:
    """The real LiveKit API client, pointed at the loopback server."""
    return api.LiveKitAPI(server.url, API_KEY, secret)
