"""Operating the sidecar: /health, /metrics, rate limits, the body size limit, security
headers, the docs, and shutdown."""

from __future__ import annotations

import socket
from collections.abc import Iterator, MutableMapping
from dataclasses import replace
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from billing.api.app import create_app
from billing.api.middleware import BodySizeLimitMiddleware
from billing.api.resources import resources_of
from storage.db import make_engine
from storage.models import Role
from tests.api_client import Member, SidecarApi


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app_client(sidecar: SidecarApi, **changes: Any) -> TestClient:
    """Another app on the same database, with a changed configuration."""
    return TestClient(create_app(replace(sidecar.config, **changes), engine=sidecar.engine))


@pytest.fixture
def admin(shared_sidecar: SidecarApi) -> Member:
    seed = shared_sidecar.seed
    return seed.member(seed.organisation(), Role.admin)


# /health


def test_health_is_healthy_with_a_database_and_no_redis(shared_sidecar: SidecarApi) -> None:
    response = shared_sidecar.client.get("/health")
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "healthy"
    assert set(report["dependencies"]) == {"database"}
    assert report["dependencies"]["database"]["status"] == "healthy"
    assert report["dependencies"]["database"]["latency_ms"] >= 0


def test_health_checks_redis_when_configured(
    shared_sidecar: SidecarApi, redis_server_url: str, redis_prefix: str
) -> None:
    with _app_client(shared_sidecar, redis_url=redis_server_url, key_prefix=redis_prefix) as client:
        report = client.get("/health").json()
    assert report["status"] == "healthy"
    assert report["dependencies"]["redis"]["status"] == "healthy"


def test_health_is_degraded_when_redis_is_down(shared_sidecar: SidecarApi) -> None:
    down = f"redis://127.0.0.1:{_closed_port()}/0"
    with _app_client(shared_sidecar, redis_url=down) as client:
        response = client.get("/health")
    assert response.status_code == 200
    report = response.json()
    assert report["status"] == "degraded"
    assert report["dependencies"]["redis"]["status"] == "unhealthy"
    assert report["dependencies"]["redis"]["error"] == "ConnectionError"
    assert report["dependencies"]["database"]["status"] == "healthy"


def test_health_is_unhealthy_503_when_the_database_is_down(shared_sidecar: SidecarApi) -> None:
    down = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nothing"
    engine = make_engine(down)
    config = replace(shared_sidecar.config, database_url=down)
    with TestClient(create_app(config, engine=engine)) as client:
        response = client.get("/health")
    assert response.status_code == 503
    report = response.json()
    assert report["status"] == "unhealthy"
    assert report["dependencies"]["database"]["status"] == "unhealthy"
    assert "127.0.0.1" not in response.text  # no connection strings in answers


def test_a_lost_database_answers_503_not_500(shared_sidecar: SidecarApi) -> None:
    down = f"postgresql+psycopg://postgres@127.0.0.1:{_closed_port()}/nothing"
    config = replace(shared_sidecar.config, database_url=down)
    with TestClient(create_app(config, engine=make_engine(down))) as client:
        response = client.get("/v1/agents", headers={"X-API-Key": "va_000000000000_" + "A" * 43})
    assert response.status_code == 503
    assert response.headers["Retry-After"]


# /metrics


def test_metrics_expose_the_sidecars_metric_names(shared_sidecar: SidecarApi) -> None:
    text = shared_sidecar.client.get("/metrics").text
    for name in (
        "sidecar_http_requests_total",
        "sidecar_http_request_seconds",
        "sidecar_billing_amount_minor_total",
        "sidecar_payment_webhook_seconds",
        "sidecar_payment_webhooks_total",
        "sidecar_quota_rejections_total",
        "sidecar_leases_active",
        "sidecar_live_workers",
        "sidecar_rate_limited_requests_total",
    ):
        assert f"# TYPE {name} " in text, name


def test_requests_are_counted_by_route_template_not_raw_path(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    shared_sidecar.client.get("/v1/agents/424242", headers=admin.headers)
    text = shared_sidecar.client.get("/metrics").text
    assert 'route="/v1/agents/{agent_id}",status="404"' in text
    assert "424242" not in text


def test_each_app_has_its_own_metrics_registry(shared_sidecar: SidecarApi) -> None:
    with _app_client(shared_sidecar) as first, _app_client(shared_sidecar) as second:
        first.get("/health")
        assert 'route="/health"' in first.get("/metrics").text
        assert 'route="/health"' not in second.get("/metrics").text


# rate limits


def test_requests_beyond_the_per_ip_limit_get_429_with_retry_after(
    shared_sidecar: SidecarApi,
) -> None:
    with _app_client(shared_sidecar, rate_limit_per_ip=3) as client:
        statuses = [client.get("/health").status_code for _ in range(4)]
        refused = client.get("/health")
    assert statuses == [200, 200, 200, 429]
    assert refused.json()["reason"] == "rate_limit_ip"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert refused.headers["X-Content-Type-Options"] == "nosniff"


def test_the_payment_webhook_has_a_budget_of_its_own(shared_sidecar: SidecarApi) -> None:
    # an unconfigured provider answers 404 without touching the database: the cheapest way
    # to spend the webhook's budget
    webhook = "/v1/payments/webhook/nopay"
    with _app_client(shared_sidecar, rate_limit_per_ip=2, rate_limit_webhook_per_ip=3) as client:
        api = [client.get("/health").status_code for _ in range(3)]
        hooks = [client.post(webhook, content=b"{}").status_code for _ in range(4)]
    assert api == [200, 200, 429]  # the IP's budget is spent...
    assert hooks == [404, 404, 404, 429]  # ...and the webhook's is counted apart
    documented = shared_sidecar.client.get("/openapi.json").json()["paths"]
    assert "429" in documented["/v1/payments/webhook/{provider}"]["post"]["responses"]
    assert "429" in documented["/health"]["get"]["responses"]


async def test_the_per_ip_limit_counts_each_address_apart(shared_sidecar: SidecarApi) -> None:
    app = create_app(
        replace(shared_sidecar.config, rate_limit_per_ip=2), engine=shared_sidecar.engine
    )

    async def statuses(ip: str, n: int) -> list[int]:
        transport = httpx.ASGITransport(app=app, client=(ip, 4000))
        async with httpx.AsyncClient(transport=transport, base_url="http://sidecar") as client:
            return [(await client.get("/metrics")).status_code for _ in range(n)]

    assert await statuses("10.0.0.1", 3) == [200, 200, 429]
    assert await statuses("10.0.0.2", 2) == [200, 200]


def test_requests_beyond_the_per_key_limit_get_429(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    other = shared_sidecar.seed.member(admin.organisation_id, Role.viewer)
    with _app_client(shared_sidecar, rate_limit_per_key=2) as client:
        statuses = [client.get("/v1/agents", headers=admin.headers).status_code for _ in range(3)]
        other_status = client.get("/v1/agents", headers=other.headers).status_code
        refused = client.get("/v1/agents", headers=admin.headers)
    assert statuses == [200, 200, 429]
    assert other_status == 200
    assert refused.json()["reason"] == "rate_limit_key"
    assert int(refused.headers["Retry-After"]) >= 1


def test_a_wrong_secret_for_a_keys_prefix_does_not_spend_that_keys_budget(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    forged = {"X-API-Key": f"va_{admin.key_prefix}_" + "A" * 43}
    with _app_client(shared_sidecar, rate_limit_per_key=2) as client:
        forged_statuses = [client.get("/v1/agents", headers=forged).status_code for _ in range(5)]
        statuses = [client.get("/v1/agents", headers=admin.headers).status_code for _ in range(2)]
    assert forged_statuses == [401] * 5
    assert statuses == [200, 200]


def test_the_per_key_limit_is_shared_through_redis(
    shared_sidecar: SidecarApi, admin: Member, redis_server_url: str, redis_prefix: str
) -> None:
    changes = {"rate_limit_per_key": 3, "redis_url": redis_server_url, "key_prefix": redis_prefix}
    with (
        _app_client(shared_sidecar, **changes) as one,
        _app_client(shared_sidecar, **changes) as two,
    ):
        statuses = [
            (one if i % 2 else two).get("/v1/agents", headers=admin.headers).status_code
            for i in range(4)
        ]
    assert statuses == [200, 200, 200, 429]


def test_workers_with_the_service_token_are_not_rate_limited(shared_sidecar: SidecarApi) -> None:
    headers = {"Authorization": f"Bearer {shared_sidecar.config.service_token}"}
    with _app_client(shared_sidecar, rate_limit_per_ip=2) as client:
        statuses = [
            client.post(
                "/internal/workers/heartbeat", json={"worker_id": "busy"}, headers=headers
            ).status_code
            for _ in range(5)
        ]
        # a wrong token is limited like anyone else
        wrong = {"Authorization": "Bearer wrong-token-0123456789"}
        guesses = [
            client.post("/internal/workers/heartbeat", json={}, headers=wrong).status_code
            for _ in range(3)
        ]
    assert statuses == [200] * 5
    assert guesses == [401, 401, 429]


def test_a_rate_limiter_outage_lets_requests_through(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    down = f"redis://127.0.0.1:{_closed_port()}/0"
    with _app_client(shared_sidecar, redis_url=down, rate_limit_per_ip=1) as client:
        statuses = [client.get("/v1/agents", headers=admin.headers).status_code for _ in range(3)]
        metrics = client.get("/metrics").text
    assert statuses == [200, 200, 200]
    # each API request checks its IP and its key; /metrics only its IP
    assert "sidecar_rate_limiter_errors_total 7.0" in metrics


# request body size


def test_a_body_over_the_limit_is_413_from_its_content_length(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    limit = shared_sidecar.config.max_body_bytes
    response = shared_sidecar.client.post(
        "/v1/agents",
        content=b'{"name": "' + b"x" * limit + b'"}',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["detail"] == f"request body larger than {limit} bytes"
    assert response.headers["X-Frame-Options"] == "DENY"


def test_a_streamed_body_over_the_limit_is_413(shared_sidecar: SidecarApi, admin: Member) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "'
        for _ in range(20):
            yield b"x" * 4096
        yield b'"}'

    response = shared_sidecar.client.post(
        "/v1/agents",
        content=chunks(),
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 413


def test_a_body_within_the_limit_is_read(shared_sidecar: SidecarApi, admin: Member) -> None:
    response = shared_sidecar.client.post(
        "/v1/agents", json={"name": "n", "instructions": "y" * 10_000}, headers=admin.headers
    )
    assert response.status_code == 201


async def test_a_streamed_body_stops_being_read_once_over_the_limit() -> None:
    """The limiter refuses at the chunk that crosses the limit, not after the whole body."""
    chunks = [b"a" * 40, b"b" * 40, b"c" * 40, b"d" * 40]
    served: list[int] = []
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        served.append(1)
        body = chunks[len(served) - 1]
        return {"type": "http.request", "body": body, "more_body": len(served) < len(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def reading_app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass

    scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
    await BodySizeLimitMiddleware(reading_app, max_body_bytes=100)(scope, receive, send)
    assert len(served) == 3
    assert sent[0]["status"] == 413


# security headers and docs


@pytest.mark.parametrize(
    ("method", "path", "authenticated"),
    [
        ("GET", "/v1/organisation", True),
        ("GET", "/v1/organisation", False),
        ("GET", "/v1/no-such-route", False),
        ("GET", "/health", False),
        ("GET", "/metrics", False),
        ("POST", "/v1/payments/webhook/acme", False),
    ],
)
def test_security_headers_are_on_every_api_response(
    shared_sidecar: SidecarApi, admin: Member, method: str, path: str, authenticated: bool
) -> None:
    headers = admin.headers if authenticated else {}
    response = shared_sidecar.client.request(method, path, headers=headers)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    assert response.headers["Cache-Control"] == "no-store"


def test_a_recording_download_keeps_its_security_headers(
    shared_sidecar: SidecarApi, admin: Member
) -> None:
    seed = shared_sidecar.seed
    recording = seed.recording(admin.organisation_id, seed.call(admin.organisation_id, None))
    response = shared_sidecar.client.get(
        f"/v1/recordings/{recording}/download", headers=admin.headers
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_the_docs_page_is_served_with_a_policy_that_lets_it_load(
    shared_sidecar: SidecarApi,
) -> None:
    page = shared_sidecar.client.get("/docs")
    assert page.status_code == 200
    assert "swagger-ui" in page.text
    policy = page.headers["Content-Security-Policy"]
    assert "script-src https://cdn.jsdelivr.net" in policy
    assert "connect-src 'self'" in policy
    assert page.headers["X-Frame-Options"] == "DENY"


def test_the_openapi_document_declares_the_api_key_header(shared_sidecar: SidecarApi) -> None:
    document = shared_sidecar.client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert {"type": "apiKey", "in": "header", "name": "X-API-Key"}.items() <= next(
        s for s in schemes.values() if s["type"] == "apiKey"
    ).items()
    assert "/v1/agents/{agent_id}" in document["paths"]
    assert "/v1/payments/webhook/{provider}" in document["paths"]


# shutdown


def test_shutdown_disposes_the_engine_and_closes_redis(
    shared_sidecar: SidecarApi,
    redis_server_url: str,
    redis_prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = replace(shared_sidecar.config, redis_url=redis_server_url, key_prefix=redis_prefix)
    engine = make_engine(config.database_url)
    app = create_app(config, engine=engine)
    resources = resources_of(app)
    closed: list[str] = []
    assert resources.redis is not None
    monkeypatch.setattr(resources.redis, "close", lambda: closed.append("redis"))
    monkeypatch.setattr(engine, "dispose", lambda: closed.append("engine"))
    with TestClient(app) as client:
        assert client.get("/health").json()["status"] == "healthy"
        assert closed == []
    assert closed == ["redis", "engine"]
