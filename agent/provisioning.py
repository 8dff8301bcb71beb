"""``python agent.py provision-sip --config sip.yaml``: the SIP side of the phone numbers,
made to match a file, through LiveKit's API.

For every number the file lists, an inbound trunk (the number, who may send calls and
how they authenticate) and a dispatch rule (a new room per call, with the worker's agent
dispatched into it and the organisation, the agent and ``hold`` in the agent's job
metadata: admission reads them, agent.admission); and one outbound trunk for
``python agent.py call`` and transfers. Everything it manages is named ``voice-agent:...``;
a managed trunk or rule the file no longer lists is deleted, anything else on the server
is left alone. Running it twice changes nothing the second time; ``--dry-run`` prints the
plan and changes nothing.

Secrets never sit in the file: ``auth_password_env`` names the environment variable that
holds a trunk's password, and the plan prints ``***`` for it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import yaml
from google.protobuf.message import Message
from livekit import api
from livekit.api.sip_service import SipService
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from agent.logs import mask_phone

PREFIX = "voice-agent:"
E164 = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Z_][A-Z0-9_]*$")]
ROOM_PREFIX = "call-"


class ProvisioningError(Exception):
    """The file cannot be used, or the server refused a change; the message says which."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrunkAuth(_Strict):
    auth_username: str | None = Field(default=None, min_length=1, max_length=200)
    auth_password_env: EnvName | None = None
    """The environment variable holding the password (never the password itself)."""

    @model_validator(mode="after")
    def _together(self) -> TrunkAuth:
        if (self.auth_username is None) != (self.auth_password_env is None):
            raise ValueError("auth_username and auth_password_env come together")
        return self

    def password(self) -> str:
        if self.auth_password_env is None:
            return ""
        value = os.environ.get(self.auth_password_env, "")
        if not value:
            raise ProvisioningError(f"{self.auth_password_env} is not set (the trunk's password)")
        return value


class Inbound(TrunkAuth):
    allowed_addresses: list[str] = Field(default_factory=list, max_length=100)
    """IP addresses or CIDR blocks the carrier sends calls from; empty: any (then set auth)."""


class Outbound(TrunkAuth):
    address: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.:\-\[\]]+$")
    """The carrier's SIP host (and port)."""
    transport: Literal["auto", "udp", "tcp", "tls"] = "auto"
    numbers: list[E164] = Field(min_length=1, max_length=100)
    """The numbers calls may show as the caller."""


class NumberRoute(_Strict):
    number: E164
    organisation_id: int = Field(ge=1)
    agent_id: int = Field(ge=1)
    hold: bool = True
    """Callers over the organisation's concurrency limit wait on hold (agent.hold)."""


class SipConfig(_Strict):
    agent_name: str = Field(default="", max_length=100)
    """The worker's ``AGENT_NAME`` (dispatch); empty: the worker's own setting."""
    inbound: Inbound = Inbound()
    outbound: Outbound | None = None
    numbers: list[NumberRoute] = Field(default_factory=list, max_length=1000)

    @model_validator(mode="after")
    def _unique(self) -> SipConfig:
        numbers = [n.number for n in self.numbers]
        if len(set(numbers)) != len(numbers):
            raise ValueError("numbers: each number once")
        return self


def load_config(path: Path) -> SipConfig:
    """Raises ProvisioningError naming the file and every field that is wrong."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ProvisioningError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ProvisioningError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict):
        raise ProvisioningError(f"{path}: expected a mapping (inbound:, outbound:, numbers:)")
    try:
        return SipConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'file'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ProvisioningError(f"{path}: {problems}") from None


@dataclass(frozen=True)
class Change:
    action: Literal["create", "update", "delete", "keep"]
    kind: Literal["inbound trunk", "outbound trunk", "dispatch rule"]
    name: str
    desired: Message | None = None
    existing_id: str | None = None

    def describe(self) -> str:
        shown = mask_phone_in_name(self.name)
        ident = f" ({self.existing_id})" if self.existing_id else ""
        return f"{self.action:>6} {self.kind} {shown}{ident}"


def mask_phone_in_name(name: str) -> str:
    head, _, number = name.rpartition(":")
    return f"{head}:{mask_phone(number)}" if number.startswith("+") else name


@dataclass(frozen=True)
class Plan:
    changes: list[Change]

    @property
    def writes(self) -> list[Change]:
        return [c for c in self.changes if c.action != "keep"]

    def lines(self) -> list[str]:
        return [c.describe() for c in self.changes]


def _inbound_trunk(config: SipConfig, number: str) -> api.SIPInboundTrunkInfo:
    inbound = config.inbound
    return api.SIPInboundTrunkInfo(
        name=f"{PREFIX}in:{number}",
        numbers=[number],
        allowed_addresses=list(inbound.allowed_addresses),
        auth_username=inbound.auth_username or "",
        auth_password=inbound.password(),
    )


def _outbound_trunk(outbound: Outbound) -> api.SIPOutboundTrunkInfo:
    transports = {
        "auto": api.SIPTransport.SIP_TRANSPORT_AUTO,
        "udp": api.SIPTransport.SIP_TRANSPORT_UDP,
        "tcp": api.SIPTransport.SIP_TRANSPORT_TCP,
        "tls": api.SIPTransport.SIP_TRANSPORT_TLS,
    }
    return api.SIPOutboundTrunkInfo(
        name=f"{PREFIX}out",
        address=outbound.address,
        transport=transports[outbound.transport],
        numbers=list(outbound.numbers),
        auth_username=outbound.auth_username or "",
        auth_password=outbound.password(),
    )


def _dispatch_rule(route: NumberRoute, trunk_id: str, agent_name: str) -> api.SIPDispatchRuleInfo:
    metadata = json.dumps(
        {
            "organisation_id": route.organisation_id,
            "agent_id": route.agent_id,
            "dialled_number": route.number,
            "hold": route.hold,
        },
        sort_keys=True,
    )
    return api.SIPDispatchRuleInfo(
        name=f"{PREFIX}rule:{route.number}",
        trunk_ids=[trunk_id],
        rule=api.SIPDispatchRule(
            dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix=ROOM_PREFIX)
        ),
        room_config=api.RoomConfiguration(
            agents=[api.RoomAgentDispatch(agent_name=agent_name, metadata=metadata)]
        ),
    )


_SERVER_FIELDS = ("sip_trunk_id", "sip_dispatch_rule_id", "created_at", "updated_at")


def _same(desired: Message, existing: Message) -> bool:
    """Whether ``existing`` already says what ``desired`` does (ids and times aside)."""
    a, b = type(desired)(), type(existing)()
    a.CopyFrom(desired)
    b.CopyFrom(existing)
    for message in (a, b):
        for name in _SERVER_FIELDS:
            if name in message.DESCRIPTOR.fields_by_name:
                message.ClearField(name)  # type: ignore[arg-type]
    return a == b


def _diff(
    kind: Literal["inbound trunk", "outbound trunk", "dispatch rule"],
    desired: dict[str, Message],
    existing: Iterable[Message],
    id_field: str,
) -> list[Change]:
    managed = {m.name: m for m in existing if m.name.startswith(PREFIX)}  # type: ignore[attr-defined]
    changes = []
    for name, want in desired.items():
        have = managed.pop(name, None)
        if have is None:
            changes.append(Change("create", kind, name, want))
        elif _same(want, have):
            changes.append(Change("keep", kind, name, want, getattr(have, id_field)))
        else:
            changes.append(Change("update", kind, name, want, getattr(have, id_field)))
    for name, gone in managed.items():
        changes.append(Change("delete", kind, name, None, getattr(gone, id_field)))
    return changes


NEW_TRUNK = "(new trunk)"


class Provisioner:
    def __init__(self, lkapi: api.LiveKitAPI, config: SipConfig, agent_name: str) -> None:
        self._api = lkapi
        self._config = config
        self._agent_name = config.agent_name or agent_name

    async def plan(self) -> Plan:
        """What applying the file would change, read from the server (no write)."""
        sip = self._api.sip
        inbound = (await sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
        outbound = (await sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())).items
        rules = (await sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
        want_in: dict[str, Message] = {}
        for route in self._config.numbers:
            trunk = _inbound_trunk(self._config, route.number)
            want_in[trunk.name] = trunk
        trunk_ids = {t.name: t.sip_trunk_id for t in inbound if t.name.startswith(PREFIX)}
        want_rules: dict[str, Message] = {}
        for route in self._config.numbers:
            trunk_id = trunk_ids.get(f"{PREFIX}in:{route.number}", NEW_TRUNK)
            rule = _dispatch_rule(route, trunk_id, self._agent_name)
            want_rules[rule.name] = rule
        want_out: dict[str, Message] = {}
        if self._config.outbound is not None:
            out = _outbound_trunk(self._config.outbound)
            want_out[out.name] = out
        return Plan(
            _diff("inbound trunk", want_in, inbound, "sip_trunk_id")
            + _diff("outbound trunk", want_out, outbound, "sip_trunk_id")
            + _diff("dispatch rule", want_rules, rules, "sip_dispatch_rule_id")
        )

    async def apply(self, plan: Plan) -> dict[str, str]:
        """Make the changes in order (rules last: they name the trunks); returns the
        managed trunks' and rules' ids by name. Raises ProvisioningError on a refusal,
        after the changes before it were made (running again finishes the job)."""
        sip = self._api.sip
        ids: dict[str, str] = {}
        # deleted rules first: a trunk cannot go while a rule names it
        ordered = sorted(
            plan.changes, key=lambda c: c.action != "delete" or c.kind != "dispatch rule"
        )
        for change in ordered:
            try:
                ids.update(await self._apply_one(sip, change, ids))
            except api.ServerError as exc:
                raise ProvisioningError(
                    f"the server refused to {change.action} {change.kind} "
                    f"{mask_phone_in_name(change.name)}: {exc.message or exc.code}"
                ) from None
        return ids

    async def _apply_one(
        self, sip: SipService, change: Change, ids: dict[str, str]
    ) -> dict[str, str]:
        want = change.desired
        if change.action == "keep":
            return {change.name: change.existing_id or ""}
        if change.action == "delete":
            assert change.existing_id is not None
            if change.kind == "dispatch rule":
                await sip.delete_dispatch_rule(
                    api.DeleteSIPDispatchRuleRequest(sip_dispatch_rule_id=change.existing_id)
                )
            else:
                await sip.delete_trunk(api.DeleteSIPTrunkRequest(sip_trunk_id=change.existing_id))
            return {}
        if isinstance(want, api.SIPDispatchRuleInfo):
            trunk_name = want.name.replace(f"{PREFIX}rule:", f"{PREFIX}in:", 1)
            del want.trunk_ids[:]
            want.trunk_ids.append(ids[trunk_name])
            if change.action == "create":
                rule = await sip.create_dispatch_rule(
                    api.CreateSIPDispatchRuleRequest(dispatch_rule=want)
                )
            else:
                rule = await sip.update_dispatch_rule(change.existing_id or "", want)
            return {want.name: rule.sip_dispatch_rule_id}
        if isinstance(want, api.SIPInboundTrunkInfo):
            if change.action == "create":
                trunk = await sip.create_inbound_trunk(api.CreateSIPInboundTrunkRequest(trunk=want))
            else:
                trunk = await sip.update_inbound_trunk(change.existing_id or "", want)
            return {want.name: trunk.sip_trunk_id}
        assert isinstance(want, api.SIPOutboundTrunkInfo)
        if change.action == "create":
            out = await sip.create_outbound_trunk(api.CreateSIPOutboundTrunkRequest(trunk=want))
        else:
            out = await sip.update_outbound_trunk(change.existing_id or "", want)
        return {want.name: out.sip_trunk_id}
