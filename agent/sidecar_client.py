"""The worker's one client for the billing sidecar's internal routes (admission leases,
agent profiles, billing events, worker heartbeats), speaking the contract in
``billing.internal_api``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TypeVar

import httpx
from pydantic import ValidationError

from agent.settings import Settings
from billing.agent_profile import AgentProfile
from billing.internal_api import (
    ADMISSIONS_PATH,
    BILLING_EVENTS_PATH,
    QUEUE_LEAVE_PATH,
    WORKER_HEARTBEAT_PATH,
    AdmissionIn,
    AdmissionOut,
    AgentProfileOut,
    LeaseOut,
    QueueLeaveIn,
    WorkerHeartbeatIn,
    WorkerHeartbeatOut,
    agent_profile_path,
    lease_heartbeat_path,
    lease_path,
    recording_upload_path,
)

log = logging.getLogger("agent.sidecar_client")

RECORDING_UPLOAD_TIMEOUT_S = 300.0


class SidecarUnavailable(Exception):
    """The sidecar did not answer, or answered with an unexpected status or body."""


class SidecarClient:
    """Async. A call has its own (admission, profile, lease); the worker's main process
    has one for the outbox and its heartbeat. Timeouts are short: admission is on the call
    path."""

    def __init__(self, base_url: str, service_token: str, *, timeout_s: float = 2.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=timeout_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> SidecarClient:
        """The client for ``SIDECAR_URL`` with ``SIDECAR_SERVICE_TOKEN``."""
        return cls(settings.sidecar_url, settings.sidecar_service_token.get_secret_value())

    async def admit(
        self,
        call_id: str,
        *,
        organisation_id: int | None,
        agent_id: int | None,
        dialled_number: str | None,
        resume: bool = False,
        hold: bool = False,
    ) -> AdmissionOut:
        """Ask for a call lease (``resume``: for a live call that lost it; never refused
        for a quota; ``hold``: the caller can wait in the queue at the limit, answered
        with a ``position``). Raises SidecarUnavailable when no decision came back."""
        body = AdmissionIn(
            call_id=call_id,
            organisation_id=organisation_id,
            agent_id=agent_id,
            dialled_number=dialled_number,
            resume=resume,
            hold=hold,
        )
        resp = await self._request("POST", ADMISSIONS_PATH, json=body.model_dump())
        if resp.status_code not in (200, 202, 409):
            raise SidecarUnavailable(f"admission answered {resp.status_code}: {resp.text[:200]}")
        return _parse(AdmissionOut, resp)

    async def heartbeat(self, lease_id: str) -> LeaseOut | None:
        """Extend the lease: its new time to live, or None when the sidecar no longer knows
        it (404). Raises SidecarUnavailable for any other answer (e.g. 503 while its Redis
        is down)."""
        resp = await self._request("POST", lease_heartbeat_path(lease_id))
        if resp.status_code not in (200, 404):
            raise SidecarUnavailable(f"heartbeat answered {resp.status_code}: {resp.text[:200]}")
        return _parse(LeaseOut, resp) if resp.status_code == 200 else None

    async def agent_profile(self, agent_id: int) -> AgentProfile:
        """The profile of one of the sidecar's agents. Raises SidecarUnavailable when it
        does not answer with one (an unknown agent included: the caller is answered with
        the default profile rather than not at all)."""
        resp = await self._request("GET", agent_profile_path(agent_id))
        if resp.status_code != 200:
            raise SidecarUnavailable(
                f"agent profile answered {resp.status_code}: {resp.text[:200]}"
            )
        return _parse(AgentProfileOut, resp).profile

    async def send_billing_events(self, body: Mapping[str, object]) -> httpx.Response:
        """POST a ``BillingEventsIn`` body; the answer as it came (the outbox sender reads
        its status and per-event results). Raises SidecarUnavailable when none came."""
        return await self._request("POST", BILLING_EVENTS_PATH, json=body)

    async def worker_heartbeat(self, worker_id: str) -> WorkerHeartbeatOut:
        """Tell the sidecar this worker is alive. Raises SidecarUnavailable."""
        body = WorkerHeartbeatIn(worker_id=worker_id).model_dump()
        resp = await self._request("POST", WORKER_HEARTBEAT_PATH, json=body)
        if resp.status_code != 200:
            raise SidecarUnavailable(f"worker heartbeat answered {resp.status_code}")
        return _parse(WorkerHeartbeatOut, resp)

    async def release(self, lease_id: str) -> None:
        await self._request("DELETE", lease_path(lease_id))

    async def put_recording(self, organisation_id: int, call_id: str, path: Path) -> int:
        """Upload a call's sealed recording, streamed from disk; the HTTP status (201:
        stored; 422: refused for good). Raises SidecarUnavailable when no answer came."""

        async def pieces() -> AsyncIterator[bytes]:
            f = await asyncio.to_thread(path.open, "rb")
            try:
                while piece := await asyncio.to_thread(f.read, 1 << 20):
                    yield piece
            finally:
                f.close()

        resp = await self._request(
            "PUT",
            recording_upload_path(organisation_id, call_id),
            content=pieces(),
            headers={"Content-Type": "application/octet-stream"},
            timeout=RECORDING_UPLOAD_TIMEOUT_S,
        )
        if resp.status_code >= 500 or resp.status_code in (401, 429):
            raise SidecarUnavailable(f"recording upload answered {resp.status_code}")
        return resp.status_code

    async def leave_queue(self, call_id: str, organisation_id: int) -> None:
        """A queued caller stopped waiting. Raises SidecarUnavailable."""
        body = QueueLeaveIn(call_id=call_id, organisation_id=organisation_id).model_dump()
        resp = await self._request("POST", QUEUE_LEAVE_PATH, json=body)
        if resp.status_code != 204:
            raise SidecarUnavailable(f"leaving the queue answered {resp.status_code}")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise SidecarUnavailable(f"{method} {path}: {exc!r}") from exc


def configured_sidecar(settings: Settings) -> SidecarClient | None:
    """The client for the configured sidecar; None when ``SIDECAR_URL`` is unset (the
    one-machine default: no quotas, no billing)."""
    return SidecarClient.from_settings(settings) if settings.sidecar_url else None


_Model = TypeVar("_Model", AdmissionOut, LeaseOut, AgentProfileOut, WorkerHeartbeatOut)


def _parse(model: type[_Model], resp: httpx.Response) -> _Model:
    try:
        return model.model_validate_json(resp.content)
    except ValidationError as exc:
        raise SidecarUnavailable(f"unexpected answer {resp.text[:200]!r}") from exc
