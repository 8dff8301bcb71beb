"""Payment webhooks: only a fresh, correctly signed, well-formed notice gets through; every
other delivery is refused with its status code and writes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from billing.ledger import apply_payment
from billing.webhooks import (
    MAX_BODY_BYTES,
    PaymentNotice,
    WebhookError,
    parse_payment_notice,
    sign,
    verify_signature,
)
from storage.db import session_scope
from storage.models import AuditLog, Organisation, Payment
from tests.billing_seed import seed_org

SECRET = b"whsec_test_0123456789abcdef"
NOW = 1_790_000_000
GOOD = {
    "provider_payment_id": "pi_123",
    "organisation_id": 1,
    "amount_minor": 5000,
    "currency": "USD",
}


def body_of(**changes: Any) -> bytes:
    """The good notice with fields changed (a value of ``...`` removes the field)."""
    fields = {**GOOD, **changes}
    return json.dumps({k: v for k, v in fields.items() if v is not ...}).encode()


def verify(body: bytes, header: str | None, *, now: float = NOW) -> None:
    verify_signature(SECRET, "stripe", header, body, now=now)


def test_a_fresh_signed_notice_is_accepted():
    body = body_of()
    verify(body, sign(SECRET, "stripe", body, NOW))
    assert parse_payment_notice("stripe", body) == PaymentNotice("stripe", "pi_123", 1, 5000, "USD")


def test_a_signature_made_exactly_at_the_tolerance_is_accepted():
    body = body_of()
    verify(body, sign(SECRET, "stripe", body, NOW - 300))
    verify(body, sign(SECRET, "stripe", body, NOW + 300))


def test_one_matching_signature_among_several_is_enough():
    # a provider rotating its secret signs with the old and the new one
    body = body_of()
    good = sign(SECRET, "stripe", body, NOW).split("v1=")[1]
    verify(body, f"t={NOW},v1={'0' * 64},v1={good}")


def test_unknown_signature_schemes_are_ignored():
    body = body_of()
    verify(body, f"{sign(SECRET, 'stripe', body, NOW)},v0=whatever")


def test_unknown_fields_in_the_body_are_ignored():
    notice = parse_payment_notice("stripe", body_of(livemode=True, metadata={"a": 1}))
    assert notice.amount_minor == 5000


def test_the_largest_allowed_amount_is_accepted():
    assert parse_payment_notice("stripe", body_of(amount_minor=10**12)).amount_minor == 10**12


def test_the_currency_set_is_configurable():
    body = body_of(currency="JPY")
    assert parse_payment_notice("stripe", body, currencies=frozenset({"JPY"})).currency == "JPY"


MALFORMED_HEADERS = {
    "not-key-value": "garbage",
    "no-timestamp": "v1=" + "0" * 64,
    "no-signature": f"t={NOW}",
    "timestamp-not-a-number": "t=abc,v1=" + "0" * 64,
    "signed-timestamp": f"t=+{NOW},v1=" + "0" * 64,
    "two-timestamps": f"t={NOW},t={NOW},v1=" + "0" * 64,
    "huge-timestamp": "t=" + "9" * 40 + ",v1=" + "0" * 64,
    "too-long": f"t={NOW}," + ",".join(["v1=" + "0" * 64] * 20),
    "non-ascii-signature": f"t={NOW},v1=é",
}


@pytest.mark.parametrize("header", [None, ""], ids=["absent", "empty"])
def test_a_missing_signature_header_is_401(header):
    with pytest.raises(WebhookError) as error:
        verify(body_of(), header)
    assert error.value.status_code == 401


@pytest.mark.parametrize("header", MALFORMED_HEADERS.values(), ids=MALFORMED_HEADERS.keys())
def test_a_malformed_signature_header_is_401(header):
    with pytest.raises(WebhookError) as error:
        verify(body_of(), header)
    assert error.value.status_code == 401


def test_a_signature_made_for_another_provider_is_401():
    # even with the same secret: the provider is part of the signed bytes
    body = body_of()
    with pytest.raises(WebhookError) as error:
        verify(body, sign(SECRET, "acmepay", body, NOW))
    assert error.value.status_code == 401


def test_a_signature_made_with_another_secret_is_401():
    body = body_of()
    with pytest.raises(WebhookError) as error:
        verify(body, sign(b"another secret entirely", "stripe", body, NOW))
    assert error.value.status_code == 401


def test_a_signature_of_another_body_is_401():
    with pytest.raises(WebhookError) as error:
        verify(body_of(amount_minor=999999), sign(SECRET, "stripe", body_of(), NOW))
    assert error.value.status_code == 401


def test_a_signature_moved_to_another_timestamp_is_401():
    body = body_of()
    signature = sign(SECRET, "stripe", body, NOW - 1000).split("v1=")[1]
    with pytest.raises(WebhookError) as error:
        verify(body, f"t={NOW},v1={signature}")
    assert error.value.status_code == 401


@pytest.mark.parametrize("age_s", [301, -301, 86_400], ids=["stale", "future", "a-day-old"])
def test_a_signature_outside_the_tolerance_is_401(age_s):
    body = body_of()
    with pytest.raises(WebhookError) as error:
        verify(body, sign(SECRET, "stripe", body, NOW - age_s))
    assert error.value.status_code == 401


def test_an_oversized_body_is_413_before_it_is_hashed_or_parsed():
    body = b"{" + b" " * MAX_BODY_BYTES + b"}"
    for check in (
        lambda: verify(body, sign(SECRET, "stripe", body, NOW)),
        lambda: parse_payment_notice("stripe", body),
    ):
        with pytest.raises(WebhookError) as error:
            check()
        assert error.value.status_code == 413


def test_an_empty_secret_is_a_configuration_error():
    with pytest.raises(ValueError):
        verify_signature(b"", "stripe", sign(b"x", "stripe", b"{}", NOW), b"{}", now=NOW)


@given(
    body=st.binary(min_size=1, max_size=200), index=st.integers(0, 199), flip=st.integers(1, 255)
)
def test_changing_any_byte_of_a_signed_body_breaks_its_signature(body, index, flip):
    header = sign(SECRET, "stripe", body, NOW)
    tampered = bytearray(body)
    tampered[index % len(body)] ^= flip
    with pytest.raises(WebhookError):
        verify(bytes(tampered), header)


MALFORMED_BODIES = {
    "truncated-json": b'{"amount_minor": 5',
    "json-array": b"[" + body_of() + b"]",
    "json-string": b'"pi_123"',
    "json-null": b"null",
    "empty": b"",
    "invalid-utf8": b'{"currency": "\xff"}',
    "nan": body_of().replace(b"5000", b"NaN"),
    "duplicated-key": b'{"amount_minor": 1, ' + body_of()[1:],
}


@pytest.mark.parametrize("body", MALFORMED_BODIES.values(), ids=MALFORMED_BODIES.keys())
def test_a_body_that_is_not_a_json_object_is_400(body):
    with pytest.raises(WebhookError) as error:
        parse_payment_notice("stripe", body)
    assert error.value.status_code == 400


INVALID_BODIES = {
    "negative-amount": body_of(amount_minor=-5),
    "zero-amount": body_of(amount_minor=0),
    "float-amount": body_of(amount_minor=10.5),
    "whole-float-amount": body_of(amount_minor=10.0),
    "string-amount": body_of(amount_minor="5000"),
    "bool-amount": body_of(amount_minor=True),
    "null-amount": body_of(amount_minor=None),
    "huge-amount": body_of(amount_minor=10**12 + 1),
    "enormous-amount": body_of(amount_minor=10**100),
    "unknown-currency": body_of(currency="JPY"),
    "lowercase-currency": body_of(currency="usd"),
    "numeric-currency": body_of(currency=840),
    "missing-amount": body_of(amount_minor=...),
    "missing-currency": body_of(currency=...),
    "missing-payment-id": body_of(provider_payment_id=...),
    "missing-organisation": body_of(organisation_id=...),
    "empty-object": b"{}",
    "empty-payment-id": body_of(provider_payment_id=""),
    "long-payment-id": body_of(provider_payment_id="p" * 201),
    "payment-id-with-spaces": body_of(provider_payment_id="pi 123"),
    "numeric-payment-id": body_of(provider_payment_id=123),
    "string-organisation": body_of(organisation_id="1"),
    "zero-organisation": body_of(organisation_id=0),
    "negative-organisation": body_of(organisation_id=-1),
    "huge-organisation": body_of(organisation_id=2**31),
}


@pytest.mark.parametrize("body", INVALID_BODIES.values(), ids=INVALID_BODIES.keys())
def test_a_notice_with_missing_or_invalid_values_is_422(body):
    with pytest.raises(WebhookError) as error:
        parse_payment_notice("stripe", body)
    assert error.value.status_code == 422


def test_a_422_message_names_the_field_without_echoing_its_value():
    with pytest.raises(WebhookError) as error:
        parse_payment_notice("stripe", body_of(amount_minor="secret-ish-value"))
    assert "amount_minor" in error.value.message
    assert "secret-ish-value" not in error.value.message


def receive(engine: Engine, header: str | None, body: bytes) -> None:
    """What the webhook route does: size and signature, then the body, then the ledger."""
    verify_signature(SECRET, "stripe", header, body, now=NOW)
    notice = parse_payment_notice("stripe", body)
    with session_scope(engine) as session:
        apply_payment(session, notice, actor="webhook:stripe")


def test_no_refused_delivery_writes_anything(engine):
    with session_scope(engine) as session:
        org, _, _ = seed_org(session, admins=0)
        org_id = org.id
    signed = body_of()
    deliveries: list[tuple[str | None, bytes]] = [
        *((header, signed) for header in [None, "", *MALFORMED_HEADERS.values()]),
        (sign(b"another secret entirely", "stripe", signed, NOW), signed),
        (sign(SECRET, "stripe", signed, NOW - 301), signed),
        (sign(SECRET, "stripe", signed, NOW + 301), signed),
        *(
            (sign(SECRET, "stripe", body, NOW), body)
            for body in [
                *MALFORMED_BODIES.values(),
                *INVALID_BODIES.values(),
                b"{" + b" " * MAX_BODY_BYTES + b"}",
            ]
        ),
    ]
    for header, body in deliveries:
        with pytest.raises(WebhookError):
            receive(engine, header, body)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Payment)).one() == 0
        assert session.exec(select(func.count()).select_from(AuditLog)).one() == 0
        stored = session.get(Organisation, org_id)
        assert stored is not None
        assert stored.balance_minor == 0
    # and a good delivery still goes through afterwards
    good = body_of(organisation_id=org_id)
    receive(engine, sign(SECRET, "stripe", good, NOW), good)
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Payment)).one() == 1
