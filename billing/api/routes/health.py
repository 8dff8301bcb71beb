"""``GET /health``: whether the sidecar's dependencies answer, and how fast.

Each dependency is ``healthy``, ``degraded`` (answered, but slower than
:data:`SLOW_S`) or ``unhealthy`` (no answer within :data:`TIMEOUT_S`, or an error). The
overall status is ``unhealthy`` (HTTP 503: take this replica out of the balancer) only
when the database is: without it nothing works. A Redis outage makes it ``degraded``
(HTTP 200): admissions fail closed and rate limits fail open, but the rest of the API
serves, and every replica shares the same Redis, so pulling them all would only turn a
partial outage into a total one. With LiveKit configured (browser users' tokens), its API
is asked to list rooms with the sidecar's key: unreachable or refusing, ``degraded``.
The LiveKit server's version is not reported: its API does not say it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Literal

import aiohttp
import anyio
import anyio.to_thread
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text

from billing.api.deps import Resources
from billing.config import LiveKitAccess

router = APIRouter(tags=["operations"])

TIMEOUT_S = 2.0
SLOW_S = 0.5

Status = Literal["healthy", "degraded", "unhealthy"]


class DependencyHealth(BaseModel):
    status: Status
    latency_ms: float
    error: str | None = None
    """The exception's type only: messages may hold connection strings."""


class HealthReport(BaseModel):
    status: Status
    dependencies: dict[str, DependencyHealth]


@router.get(
    "/health",
    response_model=HealthReport,
    responses={503: {"model": HealthReport, "description": "the database is unreachable"}},
    summary="Dependency health",
)
async def health(resources: Resources) -> JSONResponse:
    def ping_database() -> None:
        with resources.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    dependencies = {"database": await _probe(ping_database)}
    if resources.redis is not None:
        dependencies["redis"] = await _probe(resources.redis.ping)
    access = resources.config.livekit
    if access is not None:
        # the server browser users' tokens send them to: its API answers with our key
        dependencies["livekit"] = await _probe(lambda: asyncio.run(_list_rooms(access)))
    if dependencies["database"].status == "unhealthy":
        overall: Status = "unhealthy"
    elif any(d.status != "healthy" for d in dependencies.values()):
        overall = "degraded"
    else:
        overall = "healthy"
    report = HealthReport(status=overall, dependencies=dependencies)
    return JSONResponse(report.model_dump(), status_code=503 if overall == "unhealthy" else 200)


async def _list_rooms(access: LiveKitAccess) -> None:
    from livekit import api  # the sidecar's other commands never load livekit

    lkapi = api.LiveKitAPI(
        access.url, access.api_key, access.api_secret, timeout=aiohttp.ClientTimeout(TIMEOUT_S)
    )
    try:
        await lkapi.room.list_rooms(api.ListRoomsRequest())
    finally:
        await lkapi.aclose()


async def _probe(check: Callable[[], object]) -> DependencyHealth:
    """Run a blocking ``check`` in a thread, abandoned (not awaited) after TIMEOUT_S."""
    started = time.perf_counter()
    error: str | None = None
    try:
        with anyio.fail_after(TIMEOUT_S):
            await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
    except TimeoutError:
        error = "TimeoutError"
    except Exception as exc:  # any driver error means "does not answer"
        error = type(exc).__name__
    latency_ms = round((time.perf_counter() - started) * 1000, 2)
    if error is not None:
        return DependencyHealth(status="unhealthy", latency_ms=latency_ms, error=error)
    status: Status = "degraded" if latency_ms > SLOW_S * 1000 else "healthy"
    return DependencyHealth(status=status, latency_ms=latency_ms)
