"""A loopback LiveKit server API: the Twirp endpoints ``livekit-api`` calls (protobuf over
HTTP POST, ``/twirp/livekit.<Service>/<Method>``), on 127.0.0.1.

It keeps what a real server would (SIP trunks, dispatch rules, rooms, agent dispatches,
SIP participants), checks every request's access token against the API key and secret and
the grant the method needs, records every request in :attr:`LiveKitServer.requests`, and
can fail on purpose: the shared :class:`Faults` (HTTP status with a Twirp error body,
refused connection, slow answer) and a SIP-level refusal of a transfer or a dial
(``sip_status``, e.g. 486 Busy Here), as a real SIP service reports them.

Only what the worker and ``provision-sip`` use is implemented; any other method answers
Twirp's ``bad_route``, so a new call shows up as a failing test, not a silent success.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from google.protobuf.message import Message
from livekit import api
from livekit.protocol import agent, agent_dispatch, models, room, sip

from tests.loopback import Faults, LoopbackServer

API_KEY = "loopback-key"
API_SECRET = "loopback-secret-of-at-least-32-characters"


@dataclass
class LiveKitOptions(Faults):
    """The faults; a test may change them while the server runs."""

    sip_status: tuple[int, str] | None = None
    """Refuse dials and transfers as the far end would, e.g. ``(486, "Busy Here")``."""
    methods: frozenset[str] | None = None
    """Apply the shared faults only to these methods (``None``: every method)."""
    without: frozenset[str] = frozenset()
    """Methods this server lacks (Twirp's ``bad_route``), e.g. a self-hosted server
    without ``RoomService/MoveParticipant``."""


@dataclass
class Recorded:
    """One request as the server decoded it."""

    method: str
    """``Service/Method``, e.g. ``SIP/TransferSIPParticipant``."""
    message: Message
    at: float
    """When it arrived (unix seconds)."""


@dataclass
class State:
    inbound_trunks: dict[str, sip.SIPInboundTrunkInfo] = field(default_factory=dict)
    outbound_trunks: dict[str, sip.SIPOutboundTrunkInfo] = field(default_factory=dict)
    dispatch_rules: dict[str, sip.SIPDispatchRuleInfo] = field(default_factory=dict)
    rooms: set[str] = field(default_factory=set)
    dispatches: list[agent_dispatch.AgentDispatch] = field(default_factory=list)
    sip_participants: list[sip.CreateSIPParticipantRequest] = field(default_factory=list)


Handler = Callable[[Any], Message]


class LiveKitServer(LoopbackServer):
    """Pass :attr:`url`, :data:`API_KEY` and :data:`API_SECRET` to ``api.LiveKitAPI`` (or
    to the worker's settings)."""

    def __init__(self, options: LiveKitOptions | None = None) -> None:
        self.options = options or LiveKitOptions()
        super().__init__(self.options)
        self.state = State()
        self.requests: list[Recorded] = []
        self.workers_registered = 0
        self.worker_messages: list[agent.WorkerMessage] = []
        self._ids = itertools.count(1)
        sip_methods: dict[str, tuple[type[Message], Handler]] = {
            "CreateSIPInboundTrunk": (sip.CreateSIPInboundTrunkRequest, self._create_inbound),
            "UpdateSIPInboundTrunk": (sip.UpdateSIPInboundTrunkRequest, self._update_inbound),
            "ListSIPInboundTrunk": (sip.ListSIPInboundTrunkRequest, self._list_inbound),
            "CreateSIPOutboundTrunk": (sip.CreateSIPOutboundTrunkRequest, self._create_outbound),
            "UpdateSIPOutboundTrunk": (sip.UpdateSIPOutboundTrunkRequest, self._update_outbound),
            "ListSIPOutboundTrunk": (sip.ListSIPOutboundTrunkRequest, self._list_outbound),
            "DeleteSIPTrunk": (sip.DeleteSIPTrunkRequest, self._delete_trunk),
            "CreateSIPDispatchRule": (sip.CreateSIPDispatchRuleRequest, self._create_rule),
            "UpdateSIPDispatchRule": (sip.UpdateSIPDispatchRuleRequest, self._update_rule),
            "ListSIPDispatchRule": (sip.ListSIPDispatchRuleRequest, self._list_rules),
            "DeleteSIPDispatchRule": (sip.DeleteSIPDispatchRuleRequest, self._delete_rule),
            "CreateSIPParticipant": (sip.CreateSIPParticipantRequest, self._create_participant),
            "TransferSIPParticipant": (sip.TransferSIPParticipantRequest, self._transfer),
        }
        self._methods: dict[str, tuple[type[Message], Handler]] = {
            **{f"SIP/{name}": entry for name, entry in sip_methods.items()},
            "RoomService/CreateRoom": (room.CreateRoomRequest, self._create_room),
            "RoomService/DeleteRoom": (room.DeleteRoomRequest, self._delete_room),
            "RoomService/ListRooms": (room.ListRoomsRequest, self._list_rooms),
            "RoomService/MoveParticipant": (room.MoveParticipantRequest, self._move_participant),
            "AgentDispatchService/CreateDispatch": (
                agent_dispatch.CreateAgentDispatchRequest,
                self._create_dispatch,
            ),
        }

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the value for ``LIVEKIT_URL``."""
        return self.root_url

    def calls(self, method: str) -> list[Message]:
        """The decoded requests to ``method`` (``Service/Method``), in order."""
        return [r.message for r in self.requests if r.method == method]

    @property
    def writes(self) -> list[str]:
        """Every request that changed something (not a list), in order."""
        return [r.method for r in self.requests if "/List" not in r.method]

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/twirp/livekit.{service}/{method}", self._handle)
        app.router.add_get("/agent", self._agent_socket)

    async def _agent_socket(self, request: web.Request) -> web.StreamResponse:
        """Where a worker registers (``/agent``): its register request is answered, and
        every message it sends afterwards (status updates) is kept in
        :attr:`worker_messages`. No job is ever offered."""
        try:
            api.TokenVerifier(API_KEY, API_SECRET).verify(
                request.headers.get("Authorization", "").removeprefix("Bearer ")
            )
        except Exception:
            return _twirp_error(401, "unauthenticated", "invalid token")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._track(ws, request)
        try:
            first = agent.WorkerMessage.FromString(await ws.receive_bytes())
            if first.WhichOneof("message") != "register":
                await ws.close()
                return ws
            self.workers_registered += 1
            answer = agent.ServerMessage(
                register=agent.RegisterWorkerResponse(
                    worker_id=self._next_id("AW"),
                    server_info=models.ServerInfo(version="loopback", protocol=16),
                )
            )
            await ws.send_bytes(answer.SerializeToString())
            async for msg in ws:
                if msg.type == web.WSMsgType.BINARY:
                    self.worker_messages.append(agent.WorkerMessage.FromString(msg.data))
        finally:
            self._untrack(ws, request)
        return ws

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = f"{request.match_info['service']}/{request.match_info['method']}"
        entry = self._methods.get(name) if name not in self.options.without else None
        if entry is None:
            return _twirp_error(404, "bad_route", f"no handler for {name}")
        if request.headers.get("Content-Type") != "application/protobuf":
            return _twirp_error(415, "malformed", "protobuf bodies only")
        request_class, handler = entry
        try:
            message = request_class.FromString(await request.read())
        except Exception:
            return _twirp_error(400, "malformed", "not a protobuf message")
        self.requests.append(Recorded(name, message, time.time()))
        try:
            _verify(request.headers.get("Authorization", ""), name, message)
        except PermissionError as exc:
            return _twirp_error(401, "unauthenticated", str(exc))
        in_scope = self.options.methods is None or name in self.options.methods
        faults = self._take_faults() if in_scope else None
        failed = await self._before_response(
            request, faults, {"code": "unavailable", "msg": "loopback fault"}
        )
        if failed is not None:
            return failed
        try:
            answer = handler(message)
        except _TwirpFailure as exc:
            return _twirp_error(exc.status, exc.code, exc.msg, exc.meta)
        return web.Response(body=answer.SerializeToString(), content_type="application/protobuf")

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self._ids):04d}"

    # -- SIP trunks -----------------------------------------------------------------

    def _create_inbound(self, req: sip.CreateSIPInboundTrunkRequest) -> Message:
        return self._create_trunk(self.state.inbound_trunks, sip.SIPInboundTrunkInfo(), req)

    def _update_inbound(self, req: sip.UpdateSIPInboundTrunkRequest) -> Message:
        return self._replace_trunk(self.state.inbound_trunks, req)

    def _list_inbound(self, req: sip.ListSIPInboundTrunkRequest) -> Message:
        return sip.ListSIPInboundTrunkResponse(items=list(self.state.inbound_trunks.values()))

    def _create_outbound(self, req: sip.CreateSIPOutboundTrunkRequest) -> Message:
        return self._create_trunk(self.state.outbound_trunks, sip.SIPOutboundTrunkInfo(), req)

    def _update_outbound(self, req: sip.UpdateSIPOutboundTrunkRequest) -> Message:
        return self._replace_trunk(self.state.outbound_trunks, req)

    def _list_outbound(self, req: sip.ListSIPOutboundTrunkRequest) -> Message:
        return sip.ListSIPOutboundTrunkResponse(items=list(self.state.outbound_trunks.values()))

    def _create_trunk(self, trunks: dict[str, Any], trunk: Any, req: Any) -> Message:
        trunk.CopyFrom(req.trunk)
        trunk.sip_trunk_id = self._next_id("ST")
        trunks[trunk.sip_trunk_id] = trunk
        return trunk

    @staticmethod
    def _replace_trunk(trunks: dict[str, Any], req: Any) -> Message:
        trunk = trunks.get(req.sip_trunk_id)
        if trunk is None:
            raise _TwirpFailure(404, "not_found", "no such trunk")
        if req.WhichOneof("action") != "replace":
            raise _TwirpFailure(400, "invalid_argument", "only replace is implemented here")
        trunk.CopyFrom(req.replace)
        trunk.sip_trunk_id = req.sip_trunk_id
        return trunk

    def _delete_trunk(self, req: sip.DeleteSIPTrunkRequest) -> Message:
        for trunks in (self.state.inbound_trunks, self.state.outbound_trunks):
            if req.sip_trunk_id in trunks:
                trunks.pop(req.sip_trunk_id)
                return sip.SIPTrunkInfo(sip_trunk_id=req.sip_trunk_id)
        raise _TwirpFailure(404, "not_found", "no such trunk")

    # -- dispatch rules -------------------------------------------------------------

    def _create_rule(self, req: sip.CreateSIPDispatchRuleRequest) -> Message:
        rule = sip.SIPDispatchRuleInfo()
        rule.CopyFrom(req.dispatch_rule)
        rule.sip_dispatch_rule_id = self._next_id("SDR")
        for trunk_id in rule.trunk_ids:
            if trunk_id not in self.state.inbound_trunks:
                raise _TwirpFailure(400, "invalid_argument", f"unknown trunk {trunk_id}")
        self.state.dispatch_rules[rule.sip_dispatch_rule_id] = rule
        return rule

    def _update_rule(self, req: sip.UpdateSIPDispatchRuleRequest) -> Message:
        rule = self.state.dispatch_rules.get(req.sip_dispatch_rule_id)
        if rule is None:
            raise _TwirpFailure(404, "not_found", "no such dispatch rule")
        if req.WhichOneof("action") != "replace":
            raise _TwirpFailure(400, "invalid_argument", "only replace is implemented here")
        rule.CopyFrom(req.replace)
        rule.sip_dispatch_rule_id = req.sip_dispatch_rule_id
        return rule

    def _list_rules(self, req: sip.ListSIPDispatchRuleRequest) -> Message:
        return sip.ListSIPDispatchRuleResponse(items=list(self.state.dispatch_rules.values()))

    def _delete_rule(self, req: sip.DeleteSIPDispatchRuleRequest) -> Message:
        rule = self.state.dispatch_rules.pop(req.sip_dispatch_rule_id, None)
        if rule is None:
            raise _TwirpFailure(404, "not_found", "no such dispatch rule")
        return rule

    # -- calls ----------------------------------------------------------------------

    def _create_participant(self, req: sip.CreateSIPParticipantRequest) -> Message:
        if req.sip_trunk_id not in self.state.outbound_trunks:
            raise _TwirpFailure(400, "invalid_argument", f"unknown trunk {req.sip_trunk_id}")
        self._refuse_as_sip("sip_status_code")
        placed = sip.CreateSIPParticipantRequest()
        placed.CopyFrom(req)  # the state moves on (MoveParticipant); the record stays
        self.state.sip_participants.append(placed)
        self.state.rooms.add(req.room_name)
        return sip.SIPParticipantInfo(
            participant_id=self._next_id("PA"),
            participant_identity=req.participant_identity,
            room_name=req.room_name,
            sip_call_id=self._next_id("SCL"),
        )

    def _transfer(self, req: sip.TransferSIPParticipantRequest) -> Message:
        if not req.transfer_to.startswith(("tel:", "sip:")):
            raise _TwirpFailure(400, "invalid_argument", "transfer_to must be tel: or sip:")
        self._refuse_as_sip("sip_status_code", transfer=True)
        return sip.TransferSIPParticipantResponse(
            transfer_id=self._next_id("TR"),
            status=sip.SIPTransferStatus.STS_TRANSFER_SUCCESSFUL,
            reason=sip.SIPTransferReason.STR_COMPLETED,
        )

    def _refuse_as_sip(self, key: str, *, transfer: bool = False) -> None:
        if self.options.sip_status is None:
            return
        code, phrase = self.options.sip_status
        meta = {key: str(code), "sip_status": phrase}
        if transfer:
            meta["sip_transfer_reason"] = "STR_REJECTED"
        raise _TwirpFailure(400, "failed_precondition", phrase, meta)

    def _create_room(self, req: room.CreateRoomRequest) -> Message:
        self.state.rooms.add(req.name)
        return room.Room(name=req.name, sid=self._next_id("RM"), metadata=req.metadata)

    def _list_rooms(self, req: room.ListRoomsRequest) -> Message:
        return room.ListRoomsResponse(rooms=[room.Room(name=n) for n in sorted(self.state.rooms)])

    def _delete_room(self, req: room.DeleteRoomRequest) -> Message:
        self.state.rooms.discard(req.room)
        return room.DeleteRoomResponse()

    def _move_participant(self, req: room.MoveParticipantRequest) -> Message:
        dialled = [
            p
            for p in self.state.sip_participants
            if p.room_name == req.room and p.participant_identity == req.identity
        ]
        if not dialled:
            raise _TwirpFailure(404, "not_found", "participant not found in the room")
        dialled[-1].room_name = req.destination_room
        self.state.rooms.add(req.destination_room)
        return room.MoveParticipantResponse()

    def _create_dispatch(self, req: agent_dispatch.CreateAgentDispatchRequest) -> Message:
        dispatch = agent_dispatch.AgentDispatch(
            id=self._next_id("AD"), agent_name=req.agent_name, room=req.room, metadata=req.metadata
        )
        self.state.dispatches.append(dispatch)
        self.state.rooms.add(req.room)
        return dispatch


class _TwirpFailure(Exception):
    def __init__(self, status: int, code: str, msg: str, meta: dict[str, str] | None = None):
        super().__init__(msg)
        self.status, self.code, self.msg, self.meta = status, code, msg, meta


def _twirp_error(
    status: int, code: str, msg: str, meta: dict[str, str] | None = None
) -> web.Response:
    body: dict[str, Any] = {"code": code, "msg": msg}
    if meta:
        body["meta"] = meta
    return web.json_response(body, status=status)


_SIP_ADMIN = {
    "CreateSIPInboundTrunk",
    "UpdateSIPInboundTrunk",
    "ListSIPInboundTrunk",
    "CreateSIPOutboundTrunk",
    "UpdateSIPOutboundTrunk",
    "ListSIPOutboundTrunk",
    "DeleteSIPTrunk",
    "CreateSIPDispatchRule",
    "UpdateSIPDispatchRule",
    "ListSIPDispatchRule",
    "DeleteSIPDispatchRule",
}


def _verify(authorization: str, method: str, message: Message) -> None:
    """The token is signed with the server's key and grants what ``method`` needs."""
    token = authorization.removeprefix("Bearer ")
    try:
        claims = api.TokenVerifier(API_KEY, API_SECRET).verify(token)
    except Exception as exc:
        raise PermissionError(f"invalid token: {exc}") from None
    service, name = method.split("/")
    if service == "SIP":
        needed = "admin" if name in _SIP_ADMIN else "call"
        if not getattr(claims.sip, needed, False):
            raise PermissionError(f"{method} needs the SIP {needed} grant")
        if name == "TransferSIPParticipant" and not claims.video.room_admin:
            raise PermissionError("a transfer needs room admin")
    elif name == "ListRooms" and not claims.video.room_list:
        raise PermissionError(f"{method} needs the roomList grant")
    elif name == "MoveParticipant":
        destination = message.destination_room
        if not (claims.video.room_admin and claims.video.destination_room == destination):
            raise PermissionError(f"{method} needs room admin and the destination room")
    elif service == "RoomService" and name != "ListRooms" and not claims.video.room_create:
        raise PermissionError(f"{method} needs the roomCreate grant")
    elif service == "AgentDispatchService" and not claims.video.room_admin:
        raise PermissionError(f"{method} needs room admin")
