"""``POST /internal/billing-events``: usage from the workers' outboxes, applied to the
ledger exactly once per idempotency key (service token only).

Each event is applied in its own transaction, so one refused event does not undo the
others. The status tells the worker's outbox what to do with the batch: 200 when every
event is applied or already was (duplicates included; a replayed batch is a 200 that
changes nothing), 422 when the ledger refused any (the outbox then sends each event
alone, and keeps the refused ones: it never drops money).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from billing.api.deps import DbSession, Resources, ServiceCaller
from billing.api.errors import ErrorBody
from billing.audit import SYSTEM_ACTOR
from billing.ledger import LedgerError, apply_event
from billing.pricing import MAX_CALL_ID_CHARS, EventDraft
from storage.models import UsageKind

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix="/internal/billing-events",
    tags=["internal"],
    dependencies=[ServiceCaller],
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)

MAX_EVENTS_PER_BATCH = 500


class BillingEventIn(BaseModel):
    idempotency_key: str = Field(min_length=1, max_length=200)
    organisation_id: int = Field(ge=1)
    call_id: str = Field(min_length=1, max_length=MAX_CALL_ID_CHARS)
    kind: UsageKind
    quantity: Annotated[int, Field(ge=0, strict=True)]


class BillingEventsIn(BaseModel):
    events: list[BillingEventIn] = Field(max_length=MAX_EVENTS_PER_BATCH)


class BillingEventResult(BaseModel):
    created: bool
    """True when this request applied the event; False when it had been applied before
    (or was refused: see ``error``)."""
    error: str | None = None


class BillingEventsOut(BaseModel):
    results: dict[str, BillingEventResult]
    """By idempotency key. A key repeated within one batch keeps its first result."""


@router.post(
    "",
    response_model=BillingEventsOut,
    responses={422: {"model": BillingEventsOut, "description": "the ledger refused some events"}},
    summary="Apply billing events (idempotent)",
)
def apply_billing_events(
    body: BillingEventsIn, session: DbSession, resources: Resources
) -> BillingEventsOut | JSONResponse:
    metrics = resources.metrics
    results: dict[str, BillingEventResult] = {}
    for event_in in body.events:
        key = event_in.idempotency_key
        if key in results:
            continue
        draft = EventDraft(**event_in.model_dump())
        try:
            event, created = apply_event(session, draft, actor=SYSTEM_ACTOR)
            kind, currency, amount_minor = event.kind, event.currency, event.amount_minor
            session.commit()
        except LedgerError as exc:
            session.rollback()
            metrics.billing_events.labels("refused").inc()
            logger.error(
                "billing event refused",
                extra={"idempotency_key": key, "organisation_id": draft.organisation_id},
            )
            results[key] = BillingEventResult(created=False, error=str(exc))
            continue
        results[key] = BillingEventResult(created=created)
        metrics.billing_events.labels("applied" if created else "duplicate").inc()
        if created:
            metrics.billing_amount_minor.labels(UsageKind(kind).value, currency).inc(amount_minor)
    out = BillingEventsOut(results=results)
    if any(result.error is not None for result in results.values()):
        return JSONResponse(out.model_dump(), status_code=422)
    return out
