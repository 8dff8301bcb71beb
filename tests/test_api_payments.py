"""The payment webhook over HTTP: signed notices credit the balance exactly once, however
many times and however concurrently they are delivered; any bad delivery gets its 4xx and
writes nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from billing.api.app import create_app
from billing.webhooks import SIGNATURE_HEADER, sign
from storage.models import AuditLog, Payment, Role
from tests.api_client import PAYMENT_PROVIDERS, WEBHOOK_SECRET, Seeder, SidecarApi, make_config

URL = "/v1/payments/webhook/acmepay"


def notice(organisation_id: int, payment_id: str, amount_minor: int = 5000, **extra: Any) -> bytes:
    return json.dumps(
        {
            "provider_payment_id": payment_id,
            "organisation_id": organisation_id,
            "amount_minor": amount_minor,
            "currency": "USD",
            **extra,
        }
    ).encode()


def signed(
    body: bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    provider: str = "acmepay",
    at: float | None = None,
) -> dict[str, str]:
    timestamp = int(time.time() if at is None else at)
    return {
        SIGNATURE_HEADER: sign(secret.encode(), provider, body, timestamp),
        "Content-Type": "application/json",
    }


@dataclass
class AsyncSidecar:
    client: httpx.AsyncClient
    seed: Seeder


@pytest.fixture
async def async_sidecar(
    engine: Engine, database_url: str, tmp_path: Path
) -> AsyncIterator[AsyncSidecar]:
    """The app served in-process to an async client, on this test's own database."""
    app = create_app(make_config(database_url, tmp_path / "recordings"), engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
        yield AsyncSidecar(client, Seeder(engine, tmp_path / "recordings"))


async def test_concurrent_duplicate_deliveries_credit_the_balance_once(
    async_sidecar: AsyncSidecar,
) -> None:
    org = async_sidecar.seed.organisation()
    body = notice(org, "pay_concurrent", amount_minor=1234)
    responses = await asyncio.gather(
        *(async_sidecar.client.post(URL, content=body, headers=signed(body)) for _ in range(16))
    )
    assert [r.status_code for r in responses] == [200] * 16
    receipts = [r.json() for r in responses]
    assert len({r["payment_id"] for r in receipts}) == 1
    assert sorted(r["duplicate"] for r in receipts) == [False] + [True] * 15
    assert async_sidecar.seed.balance(org) == 1234
    assert async_sidecar.seed.count(Payment, organisation_id=org) == 1
    assert async_sidecar.seed.count(AuditLog, organisation_id=org, action="payment.received") == 1


async def test_concurrent_different_payments_all_credit(async_sidecar: AsyncSidecar) -> None:
    org = async_sidecar.seed.organisation()
    bodies = [notice(org, f"pay_{i}", amount_minor=100 + i) for i in range(12)]
    responses = await asyncio.gather(
        *(async_sidecar.client.post(URL, content=b, headers=signed(b)) for b in bodies)
    )
    assert all(r.status_code == 200 and not r.json()["duplicate"] for r in responses)
    assert async_sidecar.seed.balance(org) == sum(100 + i for i in range(12))


def test_a_repeated_delivery_answers_200_and_says_duplicate(shared_sidecar: SidecarApi) -> None:
    org = shared_sidecar.seed.organisation()
    body = notice(org, "pay_twice")
    first = shared_sidecar.client.post(URL, content=body, headers=signed(body))
    again = shared_sidecar.client.post(URL, content=body, headers=signed(body))
    assert first.status_code == again.status_code == 200
    assert first.json() == {"payment_id": first.json()["payment_id"], "duplicate": False}
    assert again.json() == {"payment_id": first.json()["payment_id"], "duplicate": True}
    assert shared_sidecar.seed.balance(org) == 5000


def test_the_payment_is_audited_as_the_provider_webhook(shared_sidecar: SidecarApi) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    body = notice(org, "pay_audit")
    shared_sidecar.client.post(URL, content=body, headers=signed(body))
    entries = shared_sidecar.client.get(
        "/v1/audit-log", params={"action": "payment.received"}, headers=admin.headers
    ).json()
    assert [e["actor"] for e in entries] == ["webhook:acmepay"]


Delivery = Callable[[int], tuple[str, bytes, dict[str, str]]]


def _bad(name: str, delivery: Delivery, status: int) -> Any:
    return pytest.param(delivery, status, id=name)


def _with_body(
    body: Callable[[int], bytes], headers: Callable[[bytes], dict[str, str]]
) -> Delivery:
    def make(org: int) -> tuple[str, bytes, dict[str, str]]:
        content = body(org)
        return URL, content, headers(content)

    return make


BAD_DELIVERIES = [
    _bad("no signature", _with_body(lambda o: notice(o, "p"), lambda b: {}), 401),
    _bad(
        "wrong secret",
        _with_body(lambda o: notice(o, "p"), lambda b: signed(b, secret="not-the-secret-at-all")),
        401,
    ),
    _bad(
        "stale timestamp",
        _with_body(lambda o: notice(o, "p"), lambda b: signed(b, at=time.time() - 3600)),
        401,
    ),
    _bad(
        "body changed after signing",
        _with_body(
            lambda o: notice(o, "p"),
            lambda b: signed(b.replace(b"5000", b"9000")),
        ),
        401,
    ),
    _bad(
        "malformed signature header",
        _with_body(lambda o: notice(o, "p"), lambda b: {SIGNATURE_HEADER: "v1=abc"}),
        401,
    ),
    _bad("not JSON", _with_body(lambda o: b"{not json", signed), 400),
    _bad("a JSON array", _with_body(lambda o: b"[1, 2]", signed), 400),
    _bad(
        "missing amount",
        _with_body(
            lambda o: json.dumps(
                {"provider_payment_id": "p", "organisation_id": o, "currency": "USD"}
            ).encode(),
            signed,
        ),
        422,
    ),
    _bad("float amount", _with_body(lambda o: notice(o, "p", amount_minor=10.5), signed), 422),  # type: ignore[arg-type]
    _bad("negative amount", _with_body(lambda o: notice(o, "p", amount_minor=-5), signed), 422),
    _bad(
        "unsupported currency",
        _with_body(lambda o: notice(o, "p", currency="XXX"), signed),
        422,
    ),
    _bad(
        "currency not the organisation's",
        _with_body(lambda o: notice(o, "p", currency="EUR"), signed),
        422,
    ),
    _bad("unknown organisation", _with_body(lambda o: notice(o + 10_000, "p"), signed), 422),
    _bad(
        "oversized body",
        _with_body(lambda o: notice(o, "p", padding="x" * 70_000), signed),
        413,
    ),
    _bad(
        "signed for another provider with the same secret",
        _with_body(lambda o: notice(o, "p"), lambda b: signed(b, provider="sharedpay")),
        401,
    ),
    _bad(
        "provider not configured",
        lambda o: ("/v1/payments/webhook/nopay", notice(o, "p"), signed(notice(o, "p"))),
        404,
    ),
    _bad(
        "provider name not allowed",
        lambda o: ("/v1/payments/webhook/Acme.Pay", notice(o, "p"), signed(notice(o, "p"))),
        422,
    ),
]


@pytest.mark.parametrize(("delivery", "status"), BAD_DELIVERIES)
def test_a_bad_delivery_gets_its_status_and_writes_nothing(
    shared_sidecar: SidecarApi, delivery: Delivery, status: int
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    before = (seed.count(Payment), seed.count(AuditLog), seed.balance(org))
    url, body, headers = delivery(org)
    response = shared_sidecar.client.post(url, content=body, headers=headers)
    assert response.status_code == status, response.text
    assert "detail" in response.json()
    assert (seed.count(Payment), seed.count(AuditLog), seed.balance(org)) == before


def test_an_oversized_streamed_body_is_refused_without_a_content_length(
    shared_sidecar: SidecarApi,
) -> None:
    org = shared_sidecar.seed.organisation()
    body = notice(org, "p", padding="x" * 70_000)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    headers = signed(body)
    response = shared_sidecar.client.post(URL, content=chunks(), headers=headers)
    assert response.status_code == 413
    assert shared_sidecar.seed.count(Payment, organisation_id=org) == 0


def test_payments_beyond_32_bits_are_credited_and_read_back_exactly(
    shared_sidecar: SidecarApi,
) -> None:
    seed = shared_sidecar.seed
    org = seed.organisation()
    admin = seed.member(org, Role.admin)
    for i, amount in enumerate((2**31, 10**12, 10**12)):
        body = notice(org, f"pay_big_{i}", amount_minor=amount)
        response = shared_sidecar.client.post(URL, content=body, headers=signed(body))
        assert response.status_code == 200, response.text
    balance = shared_sidecar.client.get("/v1/balance", headers=admin.headers).json()
    assert balance["balance_minor"] == 2**31 + 2 * 10**12
    too_much = notice(org, "pay_too_much", amount_minor=10**12 + 1)
    assert (
        shared_sidecar.client.post(URL, content=too_much, headers=signed(too_much)).status_code
        == 422
    )


def test_a_captured_delivery_sent_to_other_provider_urls_is_never_credited_again(
    shared_sidecar: SidecarApi,
) -> None:
    org = shared_sidecar.seed.organisation()
    body = notice(org, "pay_captured", amount_minor=700)
    headers = signed(body)
    assert shared_sidecar.client.post(URL, content=body, headers=headers).status_code == 200
    for provider in ("sharedpay", "otherpay", "nopay", "acmepay2"):
        response = shared_sidecar.client.post(
            f"/v1/payments/webhook/{provider}", content=body, headers=headers
        )
        assert response.status_code in (401, 404), provider
    assert shared_sidecar.client.post(URL, content=body, headers=headers).json()["duplicate"]
    assert shared_sidecar.seed.balance(org) == 700
    assert shared_sidecar.seed.count(Payment, organisation_id=org) == 1


def test_each_provider_verifies_with_its_own_secret(shared_sidecar: SidecarApi) -> None:
    org = shared_sidecar.seed.organisation()
    body = notice(org, "pay_other", amount_minor=300)
    url = "/v1/payments/webhook/otherpay"
    wrong = signed(body, provider="otherpay")  # acmepay's secret
    assert shared_sidecar.client.post(url, content=body, headers=wrong).status_code == 401
    right = signed(body, provider="otherpay", secret=PAYMENT_PROVIDERS["otherpay"])
    assert shared_sidecar.client.post(url, content=body, headers=right).status_code == 200
    assert shared_sidecar.seed.balance(org) == 300


def test_webhook_outcomes_and_latency_are_measured(shared_sidecar: SidecarApi) -> None:
    org = shared_sidecar.seed.organisation()
    body = notice(org, "pay_metrics")
    shared_sidecar.client.post(URL, content=body, headers=signed(body))
    shared_sidecar.client.post(URL, content=body, headers={})
    text = shared_sidecar.client.get("/metrics").text
    assert 'sidecar_payment_webhooks_total{outcome="applied",status="200"}' in text
    assert 'sidecar_payment_webhooks_total{outcome="rejected",status="401"}' in text
    assert "sidecar_payment_webhook_seconds_count" in text
    assert 'sidecar_payment_amount_minor_total{currency="USD"}' in text
