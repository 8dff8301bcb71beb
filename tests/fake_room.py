"""A stand-in for the parts of ``livekit.rtc`` a call touches without a LiveKit server:
a room that emits the caller's keypad events and a local participant that records the
keys it sends. The LiveKit *API* is never faked: tests use the loopback server
(``tests/loopback/livekit_server.py``) through the real ``livekit-api`` client."""

from __future__ import annotations

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


def loopback_api(server: LiveKitServer, *, secret: str = API_SECRET) -> api.LiveKitAPI:
    """The real LiveKit API client, pointed at the loopback server."""
    return api.LiveKitAPI(server.url, API_KEY, secret)
