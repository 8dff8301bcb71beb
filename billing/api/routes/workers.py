"""``POST /internal/workers/heartbeat``: workers say they are alive (service token only)."""

from __future__ import annotations

from fastapi import APIRouter

from billing.api.deps import Resources, ServiceCaller
from billing.api.errors import ErrorBody
from billing.internal_api import WORKER_HEARTBEAT_PATH, WorkerHeartbeatIn, WorkerHeartbeatOut

router = APIRouter(
    tags=["internal"],
    dependencies=[ServiceCaller],
    responses={401: {"model": ErrorBody}},
)


@router.post(WORKER_HEARTBEAT_PATH, response_model=WorkerHeartbeatOut, summary="A worker is alive")
def worker_heartbeat(body: WorkerHeartbeatIn, resources: Resources) -> WorkerHeartbeatOut:
    live = resources.workers.heartbeat(body.worker_id)
    return WorkerHeartbeatOut(live_workers=live, shared_leases=resources.redis is not None)
