"""Payment provider webhooks in: signature, replay window and a strict body schema.

Each configured provider has a secret of its own, and signs each delivery with it::

    X-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, b"<t>.<provider>." + body)>

``<provider>`` is the name in the webhook's URL (``/v1/payments/webhook/<provider>``).
The signed bytes hold everything that identifies the payment: the provider (so a captured
delivery sent to another provider's URL does not verify, even if two providers shared a
secret) and, in the body, the provider's payment id. Payments are idempotent by exactly
that pair. The timestamp is inside the signed bytes too, so an attacker cannot refresh an
old delivery; deliveries older (or newer) than ``tolerance_s`` are refused, so a captured
one cannot be replayed later. Several ``v1=`` entries are allowed (a provider rotating
its secret sends one per secret); one match is enough.

Status codes of :class:`WebhookError`, for the HTTP edge to return as they are:

- 413 the body is larger than ``max_body_bytes`` (checked before anything else, so an
  oversized body is never hashed or parsed);
- 401 the signature header is missing or malformed, no signature matches, or the
  timestamp is outside the tolerance. A stale or future timestamp is 401, not 408: 408
  means the *server* gave up waiting for the request, while this is a credential that is
  no longer valid, and the provider retries 401s with a fresh signature;
- 400 the body is not a JSON object (malformed JSON, invalid UTF-8, NaN, a duplicated
  key, an array or a scalar);
- 422 the JSON object has missing fields or invalid values.

Check in that order: size, :func:`verify_signature`, then :func:`parse_payment_notice`.
Nothing here writes anything; applying a notice is :func:`billing.ledger.apply_payment`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from billing.pricing import MAX_AMOUNT_MINOR
from storage.models import ROW_ID_MAX

SIGNATURE_HEADER = "X-Signature"
MAX_BODY_BYTES = 64_000
DEFAULT_CURRENCIES = frozenset({"USD", "EUR", "GBP"})
_MAX_HEADER_CHARS = 1024
_MAX_PROVIDER_CHARS = 50  # payments.provider


class WebhookError(Exception):
    """A webhook delivery that must be refused; ``status_code`` is the HTTP status to
    answer with and ``message`` a short reason safe to show the sender."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"{status_code}: {message}")
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class PaymentNotice:
    """A provider's verified statement that ``amount_minor`` was paid to the organisation."""

    provider: str
    provider_payment_id: str
    organisation_id: int
    amount_minor: int
    currency: str


PROVIDER_PATTERN = r"^[a-z0-9_-]{1,50}$"
"""A provider's name: what its webhook URL ends with and what its payments are keyed by."""


def sign(secret: bytes, provider: str, body: bytes, timestamp: int) -> str:
    """The :data:`SIGNATURE_HEADER` value ``provider`` sends for ``body`` at ``timestamp``."""
    return f"t={timestamp},v1={_hmac_hex(secret, provider, body, timestamp)}"


def verify_signature(
    secret: bytes,
    provider: str,
    header: str | None,
    body: bytes,
    *,
    now: float,
    tolerance_s: float = 300,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> None:
    """Return if ``header`` is ``provider``'s valid signature of ``body`` made within
    ``tolerance_s`` of ``now`` (unix seconds); otherwise raise :class:`WebhookError` (413
    oversized body, 401 anything wrong with the signature or its timestamp). Raises
    ValueError for an empty secret or provider (a configuration error, never the
    sender's)."""
    if not secret or not provider:
        raise ValueError("webhook secret or provider is empty")
    _check_size(body, max_body_bytes)
    timestamp, signatures = _parse_signature_header(header)
    if abs(now - timestamp) > tolerance_s:
        raise WebhookError(401, "signature timestamp outside the tolerance")
    expected = _hmac_hex(secret, provider, body, timestamp)
    # compare against every candidate, without stopping early, in constant time each
    matched = False
    for candidate in signatures:
        # compare_digest refuses non-ASCII str; such a candidate cannot match a hex digest
        matched |= candidate.isascii() and hmac.compare_digest(candidate, expected)
    if not matched:
        raise WebhookError(401, "signature does not match")


class _PaymentNoticeBody(BaseModel):
    # strict: 10.0, "10" and true are not amounts; unknown fields are the provider's own
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    provider_payment_id: Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[!-~]+$")]
    """Visible ASCII only: provider ids are opaque tokens, never text with spaces."""
    organisation_id: Annotated[int, Field(gt=0, le=ROW_ID_MAX)]
    amount_minor: Annotated[int, Field(gt=0, le=MAX_AMOUNT_MINOR)]
    currency: Annotated[str, Field(min_length=3, max_length=3)]


def parse_payment_notice(
    provider: str,
    body: bytes,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    currencies: frozenset[str] = DEFAULT_CURRENCIES,
) -> PaymentNotice:
    """The notice in a (verified) webhook body::

        {"provider_payment_id": "pi_123", "organisation_id": 7,
         "amount_minor": 5000, "currency": "USD"}

    ``amount_minor`` must be a JSON integer in 1..10**12 (not a float, string or boolean),
    ``currency`` one of ``currencies`` exactly (upper case), ``organisation_id`` a positive
    integer and ``provider_payment_id`` 1..200 visible ASCII characters. Other fields are
    ignored. Raises :class:`WebhookError` 413, 400 or 422 (see the module docstring), and
    ValueError for a bad ``provider`` (the caller's own configuration).
    """
    if not provider or len(provider) > _MAX_PROVIDER_CHARS:
        raise ValueError(f"provider must be 1..{_MAX_PROVIDER_CHARS} characters")
    _check_size(body, max_body_bytes)
    try:
        document = json.loads(
            body, parse_constant=_reject_constant, object_pairs_hook=_object_without_dupes
        )
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise WebhookError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise WebhookError(400, "body must be a JSON object")
    try:
        fields = _PaymentNoticeBody.model_validate(document)
    except ValidationError as exc:
        raise WebhookError(422, _describe(exc)) from None
    if fields.currency not in currencies:
        raise WebhookError(422, f"currency must be one of {sorted(currencies)}")
    return PaymentNotice(
        provider=provider,
        provider_payment_id=fields.provider_payment_id,
        organisation_id=fields.organisation_id,
        amount_minor=fields.amount_minor,
        currency=fields.currency,
    )


def _hmac_hex(secret: bytes, provider: str, body: bytes, timestamp: int) -> str:
    signed = f"{timestamp}.{provider}.".encode() + body
    return hmac.new(secret, signed, hashlib.sha256).hexdigest()


def _check_size(body: bytes, max_body_bytes: int) -> None:
    if len(body) > max_body_bytes:
        raise WebhookError(413, f"body larger than {max_body_bytes} bytes")


def _parse_signature_header(header: str | None) -> tuple[int, list[str]]:
    if not header:
        raise WebhookError(401, f"missing {SIGNATURE_HEADER} header")
    if len(header) > _MAX_HEADER_CHARS:
        raise WebhookError(401, f"malformed {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookError(401, f"malformed {SIGNATURE_HEADER} header")
        if name == "t":
            # ASCII digits only: int() alone would also take "+5", " 5", "1_000" and "٥";
            # at most 12 of them, so the arithmetic with a float ``now`` cannot overflow
            if timestamp is not None or not (
                value.isascii() and value.isdigit() and len(value) <= 12
            ):
                raise WebhookError(401, f"malformed {SIGNATURE_HEADER} header")
            timestamp = int(value)
        elif name == "v1":
            signatures.append(value)
        # other schemes (v0, future versions) are ignored, as providers document
    if timestamp is None or not signatures:
        raise WebhookError(401, f"malformed {SIGNATURE_HEADER} header")
    return timestamp, signatures


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _object_without_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads keeps the last of duplicated keys; another parser might keep the first
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicated key in a JSON object")
    return document


def _describe(exc: ValidationError) -> str:
    # field names and reasons only: never echo the sender's values back
    return "; ".join(
        f"{'.'.join(str(p) for p in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
