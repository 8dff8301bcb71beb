"""``POST /internal/workers/heartbeat``: workers say they are alive (service token only)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from billing.api.deps import Resources, ServiceCaller
from billing.api.errors import ErrorBody

router = APIRouter(
    prefix="/internal/workers",
    tags=["internal"],
    dependencies=[ServiceCaller],
    responses={401: {"model": ErrorBody}},
)


class WorkerHeartbeatIn(BaseModel):
    worker_id: str = Field(min_length=1, max_length=100)


class WorkerHeartbeatOut(BaseModel):
    live_workers: int
    """Workers this sidecar process heard from recently, this one included."""
    shared_leases: bool
    """False without Redis: leases are per sidecar process."""


@router.post("/heartbeat", response_model=WorkerHeartbeatOut, summary="A worker is alive")
def worker_heartbeat(body: WorkerHeartbeatIn, resources: Resources) -> WorkerHeartbeatOut:
    live = resources.workers.heartbeat(body.worker_id)
    return WorkerHeartbeatOut(live_workers=live, shared_leases=resources.redis is not None)
