"""Call admission in the worker's job request handler, before a call is accepted.

The sidecar decides (quota leases shared by every worker); the worker carries the decision
to the job as one attribute of the agent's participant (:class:`AdmissionDecision` as
JSON), where the job reads it and where a room's front end can show a refused user the
reason. A refused call is still accepted:
the agent joins only to say why (a SIP caller hears it) and then leaves, because a
rejected job would leave the caller in silence.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from agent.logs import mask_phone
from agent.settings import Settings
from agent.sidecar_client import SidecarClient, SidecarUnavailable

log = logging.getLogger("agent.admission")

ADMISSION_ATTR = "va.admission"
"""The agent participant's attribute holding the :class:`AdmissionDecision` as JSON, for the
job and for a room's front end (which shows a refused user ``message``)."""

UNAVAILABLE_MESSAGE = "Sorry, we cannot take your call right now. Please try again later."
LEASE_HEARTBEAT_INTERVAL_S = 10.0
"""The first heartbeat's delay: a third of the sidecar's default lease TTL (30 s)."""
MIN_HEARTBEAT_INTERVAL_S = 1.0


def heartbeat_interval_s(ttl_s: float) -> float:
    """Heartbeat three times per lease TTL, so two lost heartbeats in a row lose nothing."""
    return max(MIN_HEARTBEAT_INTERVAL_S, ttl_s / 3)


@dataclass(frozen=True)
class CallIdentity:
    """Who a call belongs to, from the job's metadata (set by the dispatch rule or by the
    app that created the room): ``{"organisation_id": 1, "agent_id": 2,
    "dialled_number": "+15550100"}``; every field optional."""

    call_id: str
    organisation_id: int | None
    agent_id: int | None
    dialled_number: str | None
    hold: bool = False
    """The caller can wait at the concurrency limit (``"hold": true``, set by the SIP
    dispatch rules ``provision-sip`` makes): queued with hold music instead of refused."""


class AdmissionDecision(BaseModel):
    """Whether a call is taken, and whom it is billed to. ``status``: ``admitted`` (with a
    lease), ``unleased`` (sidecar unreachable, admitted anyway and billed later through the
    outbox), ``unmetered`` (no sidecar configured), ``queued`` (waiting for a
    slot, ``position`` callers ahead; agent.hold) or ``refused`` (``reason`` and the
    ``message`` the caller hears)."""

    model_config = ConfigDict(frozen=True)

    status: Literal["admitted", "unleased", "unmetered", "queued", "refused"]
    lease_id: str | None = None
    organisation_id: int | None = None
    """Billed for the call (the sidecar's answer, however it found the organisation)."""
    agent_id: int | None = None
    """The agent that answers it (named in the metadata, or reached on the dialled number)."""
    dialled_number: str | None = None
    reason: str | None = None
    message: str | None = None
    position: int | None = None
    """Queued: callers ahead of this one."""

    @property
    def refused(self) -> bool:
        return self.status == "refused"

    def identity(self, call_id: str) -> CallIdentity:
        """The call as admitted: the organisation and agent the sidecar resolved."""
        return CallIdentity(
            call_id,
            self.organisation_id,
            self.agent_id,
            self.dialled_number,
            hold=self.status == "queued",
        )

    def to_attributes(self) -> dict[str, str]:
        return {ADMISSION_ATTR: self.model_dump_json(exclude_none=True)}

    @classmethod
    def from_attributes(cls, attributes: Mapping[str, str]) -> AdmissionDecision:
        """The decision the request handler published; a missing or malformed one (a
        front end cannot forge it: only the agent sets its own attributes) is logged and
        taken as unmetered, so the caller is still answered."""
        raw = attributes.get(ADMISSION_ATTR)
        try:
            return cls.model_validate_json(raw or "")
        except ValidationError:
            log.error("no admission decision on the job; the call is not metered")
            return cls(status="unmetered")


def call_identity(
    call_id: str, metadata_sources: list[str], default_organisation_id: int | None
) -> CallIdentity:
    """Merge the JSON metadata sources (later ones win). Malformed metadata is logged and
    ignored: it must not take the call down."""
    merged: dict[str, Any] = {}
    for raw in metadata_sources:
        if not raw:
            continue
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            log.warning("job metadata is not JSON; ignored", extra={"metadata": raw[:200]})
            continue
        if isinstance(value, dict):
            merged.update(value)
        else:
            log.warning("job metadata is not a JSON object; ignored")
    return CallIdentity(
        call_id=call_id,
        organisation_id=_int_or_none(merged.get("organisation_id")) or default_organisation_id,
        agent_id=_int_or_none(merged.get("agent_id")),
        dialled_number=merged.get("dialled_number")
        if isinstance(merged.get("dialled_number"), str)
        else None,
        hold=merged.get("hold") is True,
    )


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def decide_admission(
    identity: CallIdentity, client: SidecarClient | None, *, fail_open: bool
) -> AdmissionDecision:
    """The decision for one call: the sidecar's, or what ``fail_open`` says when it cannot
    be reached."""
    if client is None:
        return AdmissionDecision(
            status="unmetered",
            agent_id=identity.agent_id,
            dialled_number=identity.dialled_number,
        )
    try:
        answer = await client.admit(
            identity.call_id,
            organisation_id=identity.organisation_id,
            agent_id=identity.agent_id,
            dialled_number=identity.dialled_number,
            hold=identity.hold,
        )
    except SidecarUnavailable as exc:
        log.error(
            "sidecar unavailable for admission",
            extra={"error": str(exc), "fail_open": fail_open},
        )
        if fail_open:
            return AdmissionDecision(
                status="unleased",
                organisation_id=identity.organisation_id,
                agent_id=identity.agent_id,
                dialled_number=identity.dialled_number,
            )
        return AdmissionDecision(
            status="refused",
            reason="billing_unavailable",
            message=UNAVAILABLE_MESSAGE,
            dialled_number=identity.dialled_number,
        )
    if answer.admitted and answer.lease_id:
        # the sidecar's answer names the organisation and agent however the call found
        # them (its agent, the dialled number): the call is metered and billed to them
        return AdmissionDecision(
            status="admitted",
            lease_id=answer.lease_id,
            organisation_id=answer.organisation_id or identity.organisation_id,
            agent_id=answer.agent_id or identity.agent_id,
            dialled_number=identity.dialled_number,
        )
    if answer.position is not None:  # only a queued call has a place in the queue
        return AdmissionDecision(
            status="queued",
            organisation_id=answer.organisation_id or identity.organisation_id,
            agent_id=answer.agent_id or identity.agent_id,
            dialled_number=identity.dialled_number,
            position=answer.position,
            reason=answer.reason,
            message=answer.message,
        )
    log.info(
        "call refused",
        extra={
            "reason": answer.reason,
            "dialled_number": mask_phone(identity.dialled_number or ""),
        },
    )
    return AdmissionDecision(
        status="refused",
        reason=answer.reason or "refused",
        message=answer.message or UNAVAILABLE_MESSAGE,
        dialled_number=identity.dialled_number,
    )


def make_request_handler(
    settings: Settings, client: SidecarClient | None
) -> Callable[[Any], Awaitable[None]]:
    """The ``on_request`` handler for ``AgentServer.rtc_session``."""

    async def on_request(req: Any) -> None:
        identity = call_identity(
            req.job.id,
            [req.room.metadata, req.job.metadata],
            settings.default_organisation_id,
        )
        decision = await decide_admission(identity, client, fail_open=settings.admission_fail_open)
        await req.accept(attributes=decision.to_attributes())

    return on_request


class LeaseKeeper:
    """Keeps a live call counted by the sidecar until it ends.

    Heart-beats the call's lease; when the sidecar no longer knows it (it restarted with
    in-process leases, or heartbeats failed for longer than the TTL) or the call never had
    one (the sidecar was down when it started and admission failed open), admits the call
    again with ``resume``, which the sidecar never refuses for a quota. Without this a
    lost lease would leave a live call uncounted and let one call too many in. Releases
    the lease when the call ends. A sidecar that stays unreachable costs the call nothing.
    """

    def __init__(self, client: SidecarClient, identity: CallIdentity, lease_id: str | None) -> None:
        self._client = client
        self._identity = identity
        self.lease_id = lease_id
        self.interval_s = LEASE_HEARTBEAT_INTERVAL_S
        """Until the first heartbeat says the lease's TTL; then a third of it."""
        self._given_up = False

    async def tick(self) -> None:
        """One heartbeat, or one attempt to take the lease again."""
        if self._given_up:
            return
        try:
            if self.lease_id is not None:
                lease = await self._client.heartbeat(self.lease_id)
                if lease is not None:
                    self.interval_s = heartbeat_interval_s(lease.ttl_s)
                    return
                log.warning("call lease lost; taking it again", extra={"lease_id": self.lease_id})
                self.lease_id = None
            decision = await self._client.admit(
                self._identity.call_id,
                organisation_id=self._identity.organisation_id,
                agent_id=self._identity.agent_id,
                dialled_number=self._identity.dialled_number,
                resume=True,
            )
        except SidecarUnavailable as exc:
            log.warning("sidecar unreachable; the call goes on unleased", extra={"error": str(exc)})
            return
        if decision.admitted and decision.lease_id:
            self.lease_id = decision.lease_id
            log.info("call lease taken again", extra={"lease_id": self.lease_id})
        else:
            # only an unknown agent or organisation refuses a resumed call: retrying cannot help
            self._given_up = True
            log.error("the sidecar will not count this call", extra={"reason": decision.reason})

    async def run(self) -> None:
        """Tick every :attr:`interval_s` (a third of the lease's TTL, as the sidecar last
        said it) until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            await self.tick()

    async def release(self) -> None:
        """At the call's end: free the lease (if the sidecar cannot be told, the lease
        expires by its TTL, so nothing leaks)."""
        if self.lease_id is None:
            return
        try:
            await self._client.release(self.lease_id)
        except SidecarUnavailable as exc:
            log.warning("lease release failed", extra={"error": str(exc)})
        self.lease_id = None
