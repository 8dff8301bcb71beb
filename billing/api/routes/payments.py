"""``POST /v1/payments/webhook/{provider}``: a payment provider's signed notice.

No API key: the provider proves itself with an HMAC signature, made with its own secret,
over its name and the raw body (see ``billing.webhooks``). Order: the provider must be
configured (else 404), size (the app's body limit refuses an oversized body before it is
read, and ``verify_signature`` checks again), signature, parsing, then the ledger, in one
transaction that commits only on success: every error leaves nothing written. Deliveries
are idempotent by (provider, provider payment id), the pair the signature covers,
concurrent ones included.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Request
from pydantic import BaseModel

from billing.api.deps import DbSession, Resources
from billing.api.errors import ErrorBody, NotFound, Unprocessable, ValidationErrorBody
from billing.ledger import LedgerError, apply_payment
from billing.webhooks import (
    PROVIDER_PATTERN,
    SIGNATURE_HEADER,
    WebhookError,
    parse_payment_notice,
    verify_signature,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/payments", tags=["payments"])

Provider = Annotated[str, Path(min_length=1, max_length=50, pattern=PROVIDER_PATTERN)]


class PaymentReceipt(BaseModel):
    payment_id: int
    duplicate: bool
    """True when this payment had been applied before; the balance did not change now."""


async def raw_body(request: Request) -> bytes:
    """The request body exactly as sent (the signature covers these bytes)."""
    return await request.body()


_NOTICE_SCHEMA = {
    "type": "object",
    "required": ["provider_payment_id", "organisation_id", "amount_minor", "currency"],
    "properties": {
        "provider_payment_id": {"type": "string", "maxLength": 200},
        "organisation_id": {"type": "integer", "minimum": 1},
        "amount_minor": {"type": "integer", "minimum": 1},
        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
    },
}


_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in (
        (400, "body is not a JSON object"),
        (401, f"{SIGNATURE_HEADER} missing, wrong or outside the replay window"),
        (404, "no payment provider of this name is configured"),
        (413, "body too large"),
        (429, "over the webhook's own rate limit; see Retry-After"),
    )
}
_RESPONSES[422] = {
    "model": ErrorBody | ValidationErrorBody,
    "description": "invalid notice or refused by the ledger (ErrorBody), or an invalid "
    "provider name in the path (ValidationErrorBody)",
}


@router.post(
    "/webhook/{provider}",
    response_model=PaymentReceipt,
    responses=_RESPONSES,
    openapi_extra={"requestBody": {"content": {"application/json": {"schema": _NOTICE_SCHEMA}}}},
    summary="Receive a payment notice (HMAC-signed)",
)
def receive_payment(
    provider: Provider,
    body: Annotated[bytes, Depends(raw_body)],
    session: DbSession,
    resources: Resources,
    signature: Annotated[str | None, Header(alias=SIGNATURE_HEADER)] = None,
) -> PaymentReceipt:
    """200 for a new payment and for a repeated delivery of one (``duplicate``)."""
    metrics = resources.metrics
    config = resources.config
    secret = config.payment_webhook_secrets.get(provider)
    if secret is None:
        metrics.payment_webhooks.labels("rejected", "404").inc()
        raise NotFound("no payment provider of this name is configured")
    started = time.perf_counter()
    try:
        verify_signature(
            secret.encode(),
            provider,
            signature,
            body,
            now=time.time(),
            max_body_bytes=config.max_body_bytes,
        )
        notice = parse_payment_notice(provider, body, max_body_bytes=config.max_body_bytes)
        try:
            payment, created = apply_payment(session, notice, actor=f"webhook:{provider}")
        except LedgerError as exc:
            raise Unprocessable(str(exc), reason="ledger_refused") from None
        # read before the commit expires the row (reading after would query again)
        payment_id, currency, amount_minor = payment.id, payment.currency, payment.amount_minor
        session.commit()
    except WebhookError as exc:
        metrics.payment_webhooks.labels("rejected", str(exc.status_code)).inc()
        logger.warning(
            "payment webhook refused",
            extra={"provider": provider, "status": exc.status_code, "reason": exc.message},
        )
        raise
    except Unprocessable as exc:
        metrics.payment_webhooks.labels("rejected", "422").inc()
        logger.warning(
            "payment webhook refused by the ledger",
            extra={"provider": provider, "reason": exc.message},
        )
        raise
    finally:
        metrics.payment_webhook_seconds.observe(time.perf_counter() - started)
    assert payment_id is not None  # flushed by the ledger
    metrics.payment_webhooks.labels("applied" if created else "duplicate", "200").inc()
    if created:
        metrics.payment_amount_minor.labels(currency).inc(amount_minor)
    return PaymentReceipt(payment_id=payment_id, duplicate=not created)
