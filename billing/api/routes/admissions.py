"""``/internal/admissions``: call leases for workers (service token only).

Admission fails closed: when the database or Redis cannot be reached the answer is 503
(the error handlers), never an admission nobody counted.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response
from fastapi.responses import JSONResponse

from billing.admission import AdmissionRequest
from billing.api.deps import Resources, ServiceCaller
from billing.api.errors import ErrorBody, NotFound
from billing.internal_api import (
    ADMISSIONS_PATH,
    QUEUE_LEAVE_PATH,
    AdmissionIn,
    AdmissionOut,
    LeaseOut,
    QueueLeaveIn,
)

router = APIRouter(
    prefix=ADMISSIONS_PATH,
    tags=["internal"],
    dependencies=[ServiceCaller],
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)

LeaseId = Annotated[
    str,
    Path(
        min_length=3,
        max_length=75,
        pattern=r"^[1-9][0-9]{0,9}:.+$",
        description="As the admission returned it: <organisation id>:<call id>.",
    ),
]


@router.post(
    "",
    response_model=AdmissionOut,
    responses={
        202: {"model": AdmissionOut, "description": "queued (hold); see position"},
        409: {"model": AdmissionOut, "description": "refused; see reason"},
    },
    summary="Admit a call (take its lease)",
)
def admit(body: AdmissionIn, resources: Resources) -> AdmissionOut | JSONResponse:
    """200 with a ``lease_id`` to heartbeat, 202 with a queue ``position`` (``hold``), or
    409 with ``reason`` and ``message``.

    A worker whose heartbeat answers 404 admits its live call again with ``resume``."""
    decision = resources.admissions.admit(AdmissionRequest(**body.model_dump()))
    out = AdmissionOut(
        admitted=decision.admitted,
        lease_id=decision.lease_id,
        reason=decision.reason,
        message=decision.message,
        organisation_id=decision.organisation_id,
        agent_id=decision.agent_id,
        position=decision.position,
    )
    if decision.admitted and decision.lease_id is not None:
        resources.metrics.leases.granted(decision.lease_id)
        return out
    if decision.queued:
        resources.metrics.admissions_queued.labels(str(decision.position == 0).lower()).inc()
        return JSONResponse(out.model_dump(), status_code=202)
    resources.metrics.quota_rejections.labels(decision.reason or "unknown").inc()
    return JSONResponse(out.model_dump(), status_code=409)


@router.post(
    QUEUE_LEAVE_PATH.removeprefix(ADMISSIONS_PATH),
    status_code=204,
    summary="Leave the hold queue",
)
def leave_queue(body: QueueLeaveIn, resources: Resources) -> Response:
    """A queued caller stopped waiting; idempotent."""
    resources.admissions.leave_queue(body.organisation_id, body.call_id)
    return Response(status_code=204)


@router.post(
    "/{lease_id}/heartbeat",
    response_model=LeaseOut,
    responses={404: {"model": ErrorBody, "description": "the lease expired or never existed"}},
    summary="Keep a call's lease",
)
def heartbeat(lease_id: LeaseId, resources: Resources) -> LeaseOut:
    if not resources.admissions.heartbeat(lease_id):
        resources.metrics.leases.gone(lease_id)
        raise NotFound("lease expired or unknown; admit the call again")
    resources.metrics.leases.granted(lease_id)
    return LeaseOut(lease_id=lease_id, ttl_s=resources.admissions.lease_ttl_s)


@router.delete("/{lease_id}", status_code=204, summary="Release a call's lease")
def release(lease_id: LeaseId, resources: Resources) -> Response:
    """Idempotent: releasing an unknown or expired lease is a 204 too."""
    resources.admissions.release(lease_id)
    resources.metrics.leases.gone(lease_id)
    return Response(status_code=204)
