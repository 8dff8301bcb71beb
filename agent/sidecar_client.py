"""The worker's client for the billing sidecar's internal routes (admission leases)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx

log = logging.getLogger("agent.sidecar_client")


class SidecarUnavailable(Exception):
    """The sidecar did not answer, or answered with an unexpected status."""


@dataclass(frozen=True)
class AdmissionDecision:
    admitted: bool
    lease_id: str | None
    reason: str | None
    message: str


class SidecarClient:
    """Async; one per worker process. Timeouts are short: admission is on the call path."""

    def __init__(self, base_url: str, service_token: str, *, timeout_s: float = 2.0) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"Authorization": f"Bearer {service_token}"},
            timeout=timeout_s,
        )

    async def admit(
        self,
        call_id: str,
        *,
        organisation_id: int | None,
        agent_id: int | None,
        dialled_number: str | None,
        resume: bool = False,
    ) -> AdmissionDecision:
        """Ask for a call lease (``resume``: for a live call that lost it; never refused
        for a quota). Raises SidecarUnavailable when no decision came back."""
        body = {
            "call_id": call_id,
            "organisation_id": organisation_id,
            "agent_id": agent_id,
            "dialled_number": dialled_number,
            "resume": resume,
        }
        resp = await self._request("POST", "/internal/admissions", json=body)
        if resp.status_code not in (200, 409):
            raise SidecarUnavailable(f"admission answered {resp.status_code}: {resp.text[:200]}")
        data = resp.json()
        return AdmissionDecision(
            admitted=bool(data.get("admitted")),
            lease_id=data.get("lease_id"),
            reason=data.get("reason"),
            message=data.get("message") or "",
        )

    async def heartbeat(self, lease_id: str) -> bool:
        """Extend the lease; False when the sidecar no longer knows it (404). Raises
        SidecarUnavailable for any other answer (e.g. 503 while its Redis is down)."""
        resp = await self._request("POST", f"/internal/admissions/{lease_id}/heartbeat")
        if resp.status_code not in (200, 404):
            raise SidecarUnavailable(f"heartbeat answered {resp.status_code}: {resp.text[:200]}")
        return resp.status_code == 200

    async def release(self, lease_id: str) -> None:
        await self._request("DELETE", f"/internal/admissions/{lease_id}")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise SidecarUnavailable(f"{method} {path}: {exc!r}") from exc
