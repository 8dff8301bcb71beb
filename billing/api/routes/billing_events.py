"""``POST /internal/billing-events``: usage from the workers' outboxes, applied to the
ledger exactly once per idempotency key (service token only).

The batch is one transaction (``billing.ledger.apply_event_batch``, set-based), and each
event gets its own result, in the order sent: ``applied``, ``duplicate`` (applied before,
or earlier in this batch), or ``rejected`` with a ``reason`` and ``permanent``. A bad event
never holds back the good ones: the answer is 200 whenever the batch was processed, and
the outbox marks each event by its result (a permanently rejected one is set aside for an
operator, never retried for ever, never dropped). Each event is validated on its own, so
an event the schema refuses (a quantity above its kind's maximum, a missing field) is one
``rejected`` result, not a 422 for the batch; only an envelope that is not
``{"events": [...]}`` of at most 500 objects is a 422.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter
from pydantic import TypeAdapter, ValidationError

from billing.api.deps import DbSession, Resources, ServiceCaller
from billing.api.errors import ErrorBody
from billing.audit import SYSTEM_ACTOR
from billing.internal_api import (
    BILLING_EVENTS_PATH,
    BillingEventIn,
    BillingEventResult,
    BillingEventsIn,
    BillingEventsOut,
)
from billing.ledger import REJECTED_INVALID, EventOutcome, apply_event_batch
from billing.pricing import EventDraft
from storage.models import UsageKind

logger = logging.getLogger(__name__)

router = APIRouter(
    prefix=BILLING_EVENTS_PATH,
    tags=["internal"],
    dependencies=[ServiceCaller],
    responses={401: {"model": ErrorBody}, 503: {"model": ErrorBody}},
)

_EVENT = TypeAdapter(BillingEventIn)


@router.post("", response_model=BillingEventsOut, summary="Apply billing events (idempotent)")
def apply_billing_events(
    body: BillingEventsIn, session: DbSession, resources: Resources
) -> BillingEventsOut:
    metrics = resources.metrics
    results: list[BillingEventResult | None] = [None] * len(body.events)
    drafts: list[EventDraft] = []
    positions: list[int] = []
    for i, raw in enumerate(body.events):
        try:
            event = _EVENT.validate_python(raw)
        except ValidationError as exc:
            results[i] = _invalid(raw, exc)
            continue
        fields = event.model_dump(exclude={"call"})
        drafts.append(EventDraft(**fields, call=event.call.to_facts() if event.call else None))
        positions.append(i)
    outcomes = apply_event_batch(session, drafts, actor=SYSTEM_ACTOR)
    session.commit()
    for i, draft, outcome in zip(positions, drafts, outcomes, strict=True):
        results[i] = _result(draft, outcome, resources)
    out = [result for result in results if result is not None]
    for result in out:
        metrics.billing_events.labels(result.status).inc()
    return BillingEventsOut(results=out)


def _result(draft: EventDraft, outcome: EventOutcome, resources: Resources) -> BillingEventResult:
    key = draft.idempotency_key
    if outcome.error is not None:
        logger.error(
            "billing event rejected",
            extra={
                "idempotency_key": key,
                "organisation_id": draft.organisation_id,
                "reason": outcome.error.reason,
                "permanent": outcome.error.permanent,
            },
        )
        return BillingEventResult(
            idempotency_key=key,
            status="rejected",
            reason=outcome.error.reason,
            permanent=outcome.error.permanent,
            detail=outcome.error.message,
        )
    if outcome.created and outcome.event is not None:
        event = outcome.event
        resources.metrics.billing_amount_minor.labels(
            UsageKind(event.kind).value, event.currency
        ).inc(event.amount_minor)
        return BillingEventResult(idempotency_key=key, status="applied")
    return BillingEventResult(idempotency_key=key, status="duplicate")


def _invalid(raw: Any, exc: ValidationError) -> BillingEventResult:
    key = raw.get("idempotency_key") if isinstance(raw, dict) else None
    valid_key = key if isinstance(key, str) and 0 < len(key) <= 200 else None
    # field names and reasons only: never echo the sender's values back
    detail = "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'event'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
    logger.error(
        "billing event rejected", extra={"idempotency_key": valid_key, "reason": REJECTED_INVALID}
    )
    return BillingEventResult(
        idempotency_key=valid_key,
        status="rejected",
        reason=REJECTED_INVALID,
        permanent=True,
        detail=detail,
    )
